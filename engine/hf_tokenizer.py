"""An HF directory's `tokenizer.json` behind the engine's tokenizer interface.

Same surface as `engine.tokenizer.Tokenizer` (encode(text, add_special, parse_special), decode,
piece, bos_id, eos_id, eog_ids, add_bos, chat_template, vocab_size, model), backed by the
`tokenizers` package:

* ``parse_special=False`` sets ``encode_special_tokens``, so control tokens written in the text
  stay text; added tokens that are not special (llama.cpp's user-defined tokens) always match,
  as in llama.cpp.
* ``add_special`` runs the post-processor (BOS where the tokenizer adds one).
* The special ids come from tokenizer_config.json (``bos_token``, ``eos_token``,
  ``add_bos_token``, ``chat_template``), config.json and generation_config.json
  (``eos_token_id``, possibly a list: all of them end generation).
* A vocabulary may hold ids past the model's ``vocab_size`` (the GGUF -> tokenizer.json converter
  keeps characters that take part in merges but are no tokens of their own there, as the engine's
  SPM merger does); where one survives encoding it becomes its UTF-8 byte tokens ``<0xXX>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .errors import ModelLoadError
from .hf_config import read_json
from .tokenizer import _UNK_SENTINEL

EOG_TEXTS = ("<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|endoftext|>", "<|end|>",
             "<|eom_id|>", "</s>", "<eos>")


class HFTokenizer:
    model = "hf"

    def __init__(self, tok, n_vocab: int, source: str, config: dict | None = None,
                 tokenizer_config: dict | None = None, generation_config: dict | None = None):
        self._tok = tok
        self.source = source
        self.vocab_size = int(n_vocab)
        tc = tokenizer_config or {}
        cfg = config or {}
        gc = generation_config or {}

        def token_id(value):
            if isinstance(value, dict):  # {"content": "<bos>", ...}
                value = value.get("content")
            if isinstance(value, str):
                return tok.token_to_id(value)
            return None

        def ids(value):
            if isinstance(value, list):
                return [v for v in value if isinstance(v, int)]
            return [value] if isinstance(value, int) else []

        self.bos_id = token_id(tc.get("bos_token"))
        if self.bos_id is None:
            b = ids(cfg.get("bos_token_id"))
            self.bos_id = b[0] if b else None
        eos_list = ids(gc.get("eos_token_id")) + ids(cfg.get("eos_token_id"))
        tc_eos = token_id(tc.get("eos_token"))
        self.eos_id = tc_eos if tc_eos is not None else (eos_list[0] if eos_list else None)
        eog = set(eos_list)
        if self.eos_id is not None:
            eog.add(self.eos_id)
        for t in EOG_TEXTS:
            i = tok.token_to_id(t)
            if i is not None and t in ("<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|eom_id|>"):
                eog.add(i)
        self.eog_ids = frozenset(i for i in eog if 0 <= i < self.vocab_size)
        add_bos = tc.get("add_bos_token")
        if add_bos is None:
            enc = tok.encode("", add_special_tokens=True).ids
            add_bos = bool(enc) and self.bos_id is not None and enc[0] == self.bos_id
        self.add_bos = bool(add_bos)
        template = tc.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        self.chat_template = template if isinstance(template, str) else None
        self._byte_ids = [tok.token_to_id(f"<0x{b:02X}>") for b in range(256)]

    @classmethod
    def from_dir(cls, directory: str | Path, n_vocab: int | None = None, info=None
                 ) -> "HFTokenizer":
        from tokenizers import Tokenizer as RawTokenizer

        d = Path(directory)
        path = d / "tokenizer.json"
        if not path.exists():
            raise ModelLoadError(f"{d}: no tokenizer.json (the engine reads HF tokenizers from "
                                 "tokenizer.json)")
        try:
            tok = RawTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            msg = str(exc).splitlines()[0][:200]
            raise ModelLoadError(f"{path}: cannot be read by the tokenizers package ({msg})") \
                from None

        def optional(name):
            p = d / name
            return read_json(p) if p.exists() else None

        config = optional("config.json")
        if n_vocab is None:
            n_vocab = (config or {}).get("vocab_size") or tok.get_vocab_size(True)
        return cls(tok, n_vocab, str(path), config, optional("tokenizer_config.json"),
                   optional("generation_config.json"))

    # ------------------------------------------------------------------ encode / decode

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False
               ) -> list[int]:
        self._tok.encode_special_tokens = not parse_special
        try:
            ids = self._tok.encode(text, add_special_tokens=add_special).ids
        finally:
            self._tok.encode_special_tokens = False
        if any(i >= self.vocab_size for i in ids):
            ids = self._expand(ids)
        return ids

    def _expand(self, ids: list[int]) -> list[int]:
        out = []
        for i in ids:
            if i < self.vocab_size:
                out.append(i)
                continue
            text = self._tok.id_to_token(i) or ""
            if text == _UNK_SENTINEL:  # a gpt2 vocabulary's stand-in for "no token": dropped
                continue
            for b in text.encode("utf-8"):
                bid = self._byte_ids[b]
                if bid is None:
                    raise ModelLoadError(f"{self.source}: id {i} ({text!r}) is past the model's "
                                         f"vocabulary of {self.vocab_size} and there is no byte "
                                         f"token <0x{b:02X}> to spell it")
                out.append(bid)
        return out

    def _check_id(self, tid: int) -> None:
        if not 0 <= tid < self.vocab_size:
            raise ValueError(f"token id {tid} is out of range (vocabulary size {self.vocab_size})")

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        ids = [int(i) for i in ids]
        for i in ids:
            self._check_id(i)
        return self._tok.decode(ids, skip_special_tokens=skip_special)

    def piece(self, token_id: int) -> str:
        tid = int(token_id)
        self._check_id(tid)
        return self._tok.decode([tid], skip_special_tokens=False)

    def is_eog(self, token_id: int) -> bool:
        return int(token_id) in self.eog_ids

    def token_text(self, token_id: int) -> str:
        tid = int(token_id)
        self._check_id(tid)
        return self._tok.id_to_token(tid) or ""

    def __repr__(self) -> str:
        return (f"HFTokenizer(vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
                f"eos_id={self.eos_id}, add_bos={self.add_bos}, source={self.source!r})")


def tokenizer_json_from_gguf(tokenizer) -> dict:
    """A tokenizer.json equivalent to an engine `Tokenizer` built from GGUF metadata.

    The merge model is the engine's own (`Tokenizer._hf`, the SPM or BPE merge loop that matches
    llama.cpp); the special-token splitting, space handling, BOS and byte fallback that the engine
    does in Python become the normaliser, added tokens, post-processor and decoder here. Control
    tokens are special added tokens (matched only with parse_special), user-defined tokens are
    non-special added tokens (always matched), as in llama.cpp.

    One difference is left: llama.cpp splits special texts out longest-token-first over the whole
    text, `tokenizers` matches added tokens leftmost-longest in one pass; the two differ only
    where two special texts overlap in the input (tested equal on Gemma 3's vocabulary for
    chat markup, HTML-like user-defined tokens, byte fallback and 2048-token documents).
    """
    from .tokenizer import ATTR_CONTROL, ATTR_UNKNOWN, ATTR_USER_DEFINED, SPACE_MARK

    if tokenizer.model not in ("llama", "gpt2"):
        raise ModelLoadError(f"tokenizer model '{tokenizer.model}' has no tokenizer.json form")
    raw = json.loads(tokenizer._hf.to_str())
    added = []
    for i, t in enumerate(tokenizer.tokens):
        a = tokenizer.attrs[i]
        if a & (ATTR_CONTROL | ATTR_UNKNOWN | ATTR_USER_DEFINED):
            added.append({"id": i, "content": t, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False,
                          "special": bool(a & (ATTR_CONTROL | ATTR_UNKNOWN))})
    raw["added_tokens"] = added
    bos = tokenizer.tokens[tokenizer.bos_id] if tokenizer.bos_id is not None else None
    if tokenizer.model == "llama":
        norms = [{"type": "Replace", "pattern": {"String": " "}, "content": SPACE_MARK}]
        if tokenizer.add_space_prefix:
            norms.insert(0, {"type": "Prepend", "prepend": SPACE_MARK})
        raw["normalizer"] = {"type": "Sequence", "normalizers": norms}
        decoders = [{"type": "Replace", "pattern": {"String": SPACE_MARK}, "content": " "},
                    {"type": "ByteFallback"}, {"type": "Fuse"}]
        if tokenizer.add_space_prefix:
            decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
        raw["decoder"] = {"type": "Sequence", "decoders": decoders}
    else:
        raw["normalizer"] = None
        raw["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": False}
    if tokenizer.add_bos and bos is not None:
        raw["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [tokenizer.bos_id], "tokens": [bos]}}}
    else:
        raw["post_processor"] = None
    return raw
