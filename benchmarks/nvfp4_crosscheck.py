"""Identical NVFP4 weights in llama.cpp and in the engine: is NVFP4 drift the format or the engine?

`impdiff ab` on gemma3-270m shows the NVFP4 conversions drifting from llama.cpp's Q4_K_M
(KL ~0.16) while BF16 stays at ~0.004. To tell the format from an engine bug, this script writes
the *same* NVFP4 weights twice:

* a GGUF whose seven linear projections per layer are GGML NVFP4 blocks (64 values, four
  unsigned-E4M3 sub-block scales, no per-tensor scale), everything else F32, metadata and
  vocabulary copied from the source GGUF — llama.cpp runs it with its own NVFP4 kernels;
* an HF compressed-tensors directory with the same codes and block scales and
  `weight_global_scale = 1` — the engine runs it through `engine.safetensors_loader`.

GGML's NVFP4 has no per-tensor scale, so the quantisation here uses a unit tensor scale
(block scale = fp8(block_amax / 6)); the weights are a legitimate NVFP4 checkpoint that both
layouts represent exactly. Then run, e.g.:

    python benchmarks/nvfp4_crosscheck.py gemma3-270m /tmp/xc
    impdiff ab --ref llamacpp:/tmp/xc/nvfp4-unit.gguf --a nvfp4=engine:/tmp/xc/nvfp4-unit-ct \
        --no-recall --tokens 512

Agreement at the level of the GGUF/engine pair (KL ~0.004) means the engine's NVFP4 path
computes what llama.cpp's does on the same weights: the drift is the format's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

LINEAR = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def unit_scale_nvfp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """codes (uint8 [out, in/2], low nibble first) and FP8 block scales with tensor scale 1."""
    from impdiff.engine import nvfp4

    rows, cols = w.shape
    blocks = w.view(rows, cols // 16, 16)
    scale = (blocks.abs().amax(-1) / 6.0).clamp(max=448.0).to(torch.float8_e4m3fn)
    eff = scale.float()
    x = torch.where(eff[..., None] > 0, blocks / eff[..., None].clamp(min=1e-38),
                    torch.zeros_like(blocks))
    codes = nvfp4.round_to_e2m1(x).view(rows, cols)
    return nvfp4.pack_codes(codes), scale


def ggml_blocks(packed: torch.Tensor, scale: torch.Tensor) -> np.ndarray:
    """HF layout -> GGML NVFP4 blocks [rows, n_blocks * 36] (values 0..7 of each 16 in the low
    nibbles, 8..15 in the high ones; four scale bytes first)."""
    p = packed.numpy()
    rows = p.shape[0]
    codes = np.stack([p & 0x0F, p >> 4], -1).reshape(rows, -1)
    sub = codes.reshape(rows, -1, 16)
    qs = (sub[..., :8] | (sub[..., 8:] << 4)).astype(np.uint8).reshape(rows, -1, 32)
    d = scale.view(torch.uint8).numpy().reshape(rows, -1, 4)
    return np.concatenate([d, qs], -1).reshape(rows, -1)


def main(src: str, out: str) -> None:
    import gguf

    from impdiff.convert import gguf_hf_config, tokenizer_files, write_safetensors
    from impdiff.engine.config import config_from_gguf
    from impdiff.engine.gguf_file import GGUFFile
    from impdiff.engine.quants import dequantize
    from impdiff.engine.tokenizer import Tokenizer
    from impdiff.real_models import resolve_model

    src_path = resolve_model(src)
    out_dir = Path(out)
    hf_dir = out_dir / "nvfp4-unit-ct"
    hf_dir.mkdir(parents=True, exist_ok=True)
    gf = GGUFFile(src_path)
    cfg = config_from_gguf(gf)
    tok = Tokenizer.from_gguf(gf)
    reader = gguf.GGUFReader(str(src_path))
    writer = gguf.GGUFWriter(str(out_dir / "nvfp4-unit.gguf"), cfg.arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name == "general.file_type":
            value = int(gguf.LlamaFileType.MOSTLY_NVFP4)
        writer.add_key_value(field.name, value, vtype, sub_type=sub)

    hf: dict[str, torch.Tensor] = {}
    gemma = cfg.arch == "gemma3"
    for name, raw in gf.tensors.items():
        # the BF16 step of `impdiff convert`, so the weights match the BF16 directory's
        w = dequantize(raw.data, raw.qtype, raw.shape).float().to(torch.bfloat16).float()
        parts = name.split(".")
        kind = parts[2] if parts[0] == "blk" else None
        if kind in LINEAR:
            packed, scale = unit_scale_nvfp4(w)
            blocks = ggml_blocks(packed, scale)
            writer.add_tensor(name, blocks, raw_shape=blocks.shape,
                              raw_dtype=gguf.GGMLQuantizationType.NVFP4)
            if cfg.arch == "llama":
                raise SystemExit("llama Q/K would need the un-permute here; gemma3/qwen3 only")
            hf_name = _hf_name(name, gemma)[:-len(".weight")]
            hf[hf_name + ".weight_packed"] = packed
            hf[hf_name + ".weight_scale"] = scale
            hf[hf_name + ".weight_global_scale"] = torch.ones(1)
        else:
            writer.add_tensor(name, w.numpy().astype(np.float32))
            hw = w - 1.0 if gemma and parts[-2].endswith("norm") else w
            hf[_hf_name(name, gemma)] = hw.to(torch.bfloat16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    write_safetensors(hf_dir, hf, None)
    config = gguf_hf_config(gf, cfg, tok)
    scheme = {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16}
    config["quantization_config"] = {
        "quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
        "ignore": ["lm_head"], "config_groups": {"group_0": {
            "format": "nvfp4-pack-quantized", "targets": ["Linear"], "weights": scheme}}}
    (hf_dir / "config.json").write_text(json.dumps(config, indent=2))
    for fname, text in tokenizer_files(tok).items():
        (hf_dir / fname).write_text(text, encoding="utf-8")
    print(f"wrote {out_dir / 'nvfp4-unit.gguf'} and {hf_dir}")


def _hf_name(name: str, gemma: bool) -> str:
    from impdiff.convert import _GGUF_TO_HF_LAYER

    parts = name.split(".")
    if parts[0] != "blk":
        return {"token_embd.weight": "model.embed_tokens.weight",
                "output_norm.weight": "model.norm.weight",
                "output.weight": "lm_head.weight"}[name]
    kind = parts[2]
    hf = _GGUF_TO_HF_LAYER.get(kind) or (
        "pre_feedforward_layernorm" if gemma else "post_attention_layernorm")
    return f"model.layers.{parts[1]}.{hf}.weight"


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
