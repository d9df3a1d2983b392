"""The impdiff reference inference engine: GGUF in, tokens and named activation taps out.

The engine is a readable PyTorch reference first; fast kernels live beside it in
`impdiff.kernels` and are checked against it. It never imports the debugger.
"""
