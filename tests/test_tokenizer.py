"""The GGUF tokenizer against llama.cpp (llama-cpp-python's low-level API) on real vocabularies.

Each real vocabulary (Gemma 3 270M: SPM; SmolLM2: byte-level BPE; Gemma 4: SentencePiece-style
BPE, the vocabulary file llama.cpp ships for its own tokenizer tests) is loaded once per module,
both by `impdiff.engine.tokenizer.Tokenizer` and by llama.cpp with ``vocab_only=True``. Ids must
agree exactly on a few hundred strings (seeded random mixes plus hand-written hard cases) for
every combination of ``add_special`` and ``parse_special``; detokenisation, per-token pieces and
the special ids must agree too. Tests that need llama.cpp or the model packages skip when those
are not installed.
"""

from __future__ import annotations

import ctypes
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from impdiff.engine.errors import ModelLoadError
from impdiff.engine.tokenizer import Tokenizer

REAL_MODELS = ["gemma3-270m", "smollm2-135m", "gemma4-vocab"]


def gemma4_vocab() -> Path | None:
    """llama.cpp's `models/ggml-vocab-gemma-4.gguf` (the real Gemma 4 tokenizer, no weights): in
    the llama-cpp-python sdist (vendor/llama.cpp/models/), or $IMPDIFF_GEMMA4_VOCAB."""
    import glob
    import os

    env = os.environ.get("IMPDIFF_GEMMA4_VOCAB")
    if env:
        return Path(env)
    found = sorted(glob.glob("/tmp/sdist/llama_cpp_python-*/vendor/llama.cpp/models/"
                             "ggml-vocab-gemma-4.gguf"))
    return Path(found[-1]) if found else None


# --------------------------------------------------------------------------- llama.cpp helper


class LlamaVocab:
    """A llama.cpp vocabulary loaded with vocab_only=True, with byte-level helpers."""

    def __init__(self, path: Path):
        import llama_cpp
        from llama_cpp import _logger

        _logger.set_verbose(False)
        self.lib = llama_cpp
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_tokens = llama_cpp.llama_vocab_n_tokens(self.vocab)

    def close(self) -> None:
        self.lib.llama_model_free(self.model)

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        raw = text.encode("utf-8")
        n_max = len(raw) + 8
        while True:
            buf = (self.lib.llama_token * n_max)()
            n = self.lib.llama_tokenize(self.vocab, raw, len(raw), buf, n_max, add_special,
                                        parse_special)
            if n >= 0:
                return list(buf[:n])
            n_max = -n

    def detokenize(self, ids: list[int], remove_special: bool, unparse_special: bool) -> bytes:
        arr = (self.lib.llama_token * max(1, len(ids)))(*ids)
        size = 64 + 16 * len(ids)
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self.lib.llama_detokenize(self.vocab, arr, len(ids), buf, size, remove_special,
                                          unparse_special)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def piece(self, token: int, special: bool) -> bytes:
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self.lib.llama_token_to_piece(self.vocab, token, buf, size, 0, special)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def special_texts(self, rng: random.Random, k: int) -> list[str]:
        """Texts of up to k control / user-defined tokens, chosen by llama.cpp's attributes."""
        ctrl = self.lib.LLAMA_TOKEN_ATTR_CONTROL | self.lib.LLAMA_TOKEN_ATTR_USER_DEFINED
        ids = [i for i in range(self.n_tokens)
               if self.lib.llama_vocab_get_attr(self.vocab, i) & ctrl]
        picked = rng.sample(ids, min(k, len(ids)))
        return [self.piece(i, True).decode("utf-8", errors="replace") for i in picked]


@pytest.fixture(scope="module", params=REAL_MODELS)
def pair(request):
    """(our Tokenizer, llama.cpp vocab, test strings) for one real model."""
    pytest.importorskip("llama_cpp")
    from impdiff.engine.gguf_file import GGUFFile
    from impdiff.real_models import REAL_MODELS as MODELS

    if request.param == "gemma4-vocab":
        path = gemma4_vocab()
        if path is None or not path.exists():
            pytest.skip("ggml-vocab-gemma-4.gguf not found (set IMPDIFF_GEMMA4_VOCAB to the file "
                        "in llama-cpp-python's sdist, vendor/llama.cpp/models/)")
    else:
        path = MODELS[request.param].locate()
        if path is None:
            pytest.skip(f"{request.param} is not installed "
                        f"(pip install {MODELS[request.param].package})")
    gf = GGUFFile(path)
    ours = Tokenizer.from_gguf(gf)
    ref = LlamaVocab(path)
    strings = _test_strings(ref, seed=1234)
    yield SimpleNamespace(name=request.param, ours=ours, ref=ref, strings=strings,
                          metadata=gf.metadata)
    ref.close()


# --------------------------------------------------------------------------- test strings

HARD_CASES = [
    "", " ", "  ", "   ", "\t", "\n", "\n\n", "\n\n\n", "\t\n", " \n", "\r\n", "\r\n\r\n",
    "Hello world", " Hello world", "Hello World!", "  leading", "trailing  ", " both ",
    "Hello, world! How's it going? I'm fine; you'll see -- we've done it.",
    "don't DON'T 's 'S 're 'll 'd 'm 've ' ' '' '", "a ' b", "x , y . z ! w ?",
    "3.14159 2718281828459045 1,000,000 12345678901234567890 0x1F 1e-9 -42 +7",
    "1 12 123 1234 12345 123456", "٣٤٥ ١٢ ๑๒๓ ½ ² Ⅻ ⑦",
    "日本語のテキストです。中文文本，还有标点！한국어 문장입니다.",
    "Emoji 🦙🔥👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ ✅ 🫠",
    "Café naïve résumé façade Ångström über straße ÆØÅ æøå",
    "e\u0301 a\u0300 n\u0303 combining: o\u0308\u0301",
    "العربية من اليمين إلى اليسار עברית משמאל 123 mixed عربي",
    "Ελληνικά Русский текст Українська हिन्दी ภาษาไทย ქართული",
    "tabs\tand\tspaces  \t  mixed\t\t\tend",
    "    four spaces\n        eight spaces\n\t\ttwo tabs",
    "line1\nline2\n\nline4\r\nline5\n\n\n\n\nline10",
    " " * 17 + "x" + " " * 33, "\n" * 40 + "y", "\t" * 9,
    "def f(x):\n    return x ** 2  # square\n\nprint(f(3))\n",
    "for (int i = 0; i < n; ++i) { a[i] = b[i] * c; }",
    "<div class=\"x\"><p>para</p><br/></div>",
    "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
    "SELECT * FROM t WHERE id = 42 AND name LIKE '%foo%';",
    "https://example.com/path?q=1&r=two#frag user@example.org",
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>", "<unk>", "<mask>",
    "<bos><bos>text<eos>", "x<start_of_turn>y", " <start_of_turn> ", "<start_of_turn\n>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "a<|im_end|>b", "<|im_start|><|im_start|>",
    "<|im_start", "im_start|>", "<<|im_end|>>", "<repo_name>x<file_sep>", "<reponame>",
    "<unused0><unused99>", "[@BOS@]", "<start_of_image>", "<image_soft_token>",
    "\x00\x01\x07\x1b[0m\x7f", "zero\u200bwidth\u200djoiner\ufeffbom", "\ufffd replacement",
    "\u00a0nbsp\u2003em\u3000ideographic\u2028ls\u2029ps\u0085nel",
    "𝕳𝖊𝖑𝖑𝖔 𝓦𝓸𝓻𝓵𝓭 ∀x∈ℝ: x²≥0 ∑∫√∞ ≠ ≤ ≥",
    # plane-4..7 characters: SmolLM2's vocabulary lacks the 0xF1 lead byte, which llama.cpp keeps
    # as a merge barrier and then drops
    "\U000c015e\U0004b4acĞ", "a\U00050000b \U00070001\U00060002",
    "▁ already escaped ▁▁ spaces", "<0x41> <0xFF> byte-token text",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "==========", "----------------", "..........",
    "!!!???", "''''", "\"\"\"docstring\"\"\"", "~~~```", "@@@###$$$%%%^^^&&&***",
    "Ünïcödé ÜBER CAPS lower MiXeD", "ǅ ǈ ǋ ǲ titlecase", "ﬁ ﬂ ligatures", "Ａ全角ｶﾀｶﾅ",
]

_POOLS = {
    "ascii_word": ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "Hello",
                   "WORLD", "token", "izer", "llama", "gemma", "smol", "I", "a", "x", "Python"],
    "punct": list(".,;:!?'\"()[]{}<>/\\|-_=+*&^%$#@~`"),
    "digits": ["0", "7", "42", "123", "2024", "31415926535", "000", "1,234", "3.5", "1e10"],
    "space": [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\t\t", "    ", " " * 9],
    "cjk": list("日本語中文字漢字ひらがなカタカナ한국어의문장") + ["東京", "北京市", "こんにちは"],
    "emoji": ["🦙", "🔥", "👍🏽", "👨‍💻", "🇯🇵", "❤️", "😀", "🤖", "🧪", "✨"],
    "accent": ["é", "ñ", "ü", "ç", "ø", "å", "ß", "œ", "e\u0301", "a\u0308", "Ł", "ğ", "ș"],
    "rtl": ["مرحبا", "العالم", "שלום", "עולם", "فارسی", "اردو", "ـ"],
    "other_script": ["Привет", "мир", "γειά", "नमस्ते", "สวัสดี", "გამარჯობა", "Ողջույն"],
    "symbol": ["∑", "√", "∞", "≠", "→", "⇒", "©", "®", "™", "°", "€", "£", "¥", "§", "¶", "•"],
    "code": ["def ", "return ", "if (x) {", "}", "=>", "::", "->", "!=", "==", "+=", "//",
             "/* */", "#include", "<div>", "</div>", "</p>", "&amp;", "0x", "\\n", "  # "],
    "rare": ["\x00", "\x0b", "\x0c", "\x1f", "\u200b", "\u00a0", "\u3000", "\ufffd", "\U0001d54f",
             "\u2028", "\u0085", "\U0010fffd", "\ue000", "\U0004b4ac", "\U000c015e", "\U0002a6d6"],
}
_WEIGHTS = {"ascii_word": 10, "punct": 5, "digits": 4, "space": 8, "cjk": 3, "emoji": 2,
            "accent": 3, "rtl": 2, "other_script": 2, "symbol": 2, "code": 3, "rare": 1,
            "special": 2}


def _random_string(rng: random.Random, specials: list[str]) -> str:
    pools = dict(_POOLS, special=specials or ["<s>"])
    names = list(_WEIGHTS)
    weights = [_WEIGHTS[n] for n in names]
    n = rng.choice([1, 2, 3, 5, 8, 13, 21, 40])
    parts = []
    for _ in range(n):
        pool = pools[rng.choices(names, weights)[0]]
        parts.append(rng.choice(pool))
        if rng.random() < 0.35:
            parts.append(" ")
    return "".join(parts)


def _test_strings(ref: LlamaVocab, seed: int, n_random: int = 300) -> list[str]:
    rng = random.Random(seed)
    specials = ref.special_texts(rng, 40) + ["<start_of_turn>", "<end_of_turn>", "<|im_start|>",
                                             "<|im_end|>", "<|endoftext|>", "<bos>", "<eos>"]
    randoms = [_random_string(rng, specials) for _ in range(n_random)]
    return HARD_CASES + [s + "\n" for s in specials[:40]] + randoms


# --------------------------------------------------------------------------- tests


def _report(name: str, what: str, bad: list[tuple], total: int) -> str:
    lines = [f"{name}: {len(bad)}/{total} strings differ ({what}); first ones:"]
    for s, ours, ref in bad[:8]:
        lines.append(f"  text={s!r}\n    ours     ={ours}\n    llama.cpp={ref}")
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize("parse_special", [False, True], ids=["raw", "parse_special"])
@pytest.mark.parametrize("add_special", [False, True], ids=["no_bos", "add_special"])
def test_encode_matches_llama_cpp(pair, add_special, parse_special):
    bad = []
    for s in pair.strings:
        ours = pair.ours.encode(s, add_special=add_special, parse_special=parse_special)
        ref = pair.ref.tokenize(s, add_special, parse_special)
        if ours != ref:
            bad.append((s, ours, ref))
    assert not bad, _report(pair.name, f"add_special={add_special}, "
                            f"parse_special={parse_special}", bad, len(pair.strings))


@pytest.mark.slow
@pytest.mark.parametrize("skip_special", [False, True], ids=["keep_special", "skip_special"])
def test_decode_matches_llama_detokenize(pair, skip_special):
    bad = []
    for s in pair.strings:
        for parse in (False, True):
            ids = pair.ref.tokenize(s, True, parse)
            ours = pair.ours.decode_bytes(ids, skip_special=skip_special)
            ref = pair.ref.detokenize(ids, remove_special=skip_special,
                                      unparse_special=not skip_special)
            if ours != ref:
                bad.append((s, ours, ref))
            assert pair.ours.decode(ids, skip_special) == ref.decode("utf-8", errors="replace")
    assert not bad, _report(pair.name, f"decode skip_special={skip_special}", bad,
                            2 * len(pair.strings))


@pytest.mark.slow
def test_round_trip_where_llama_cpp_round_trips(pair):
    bad = []
    n = 0
    for s in pair.strings:
        ids = pair.ours.encode(s, add_special=False, parse_special=True)
        ref_text = pair.ref.detokenize(ids, remove_special=False, unparse_special=True)
        if ref_text == s.encode("utf-8"):
            n += 1
            if pair.ours.decode(ids) != s:
                bad.append((s, pair.ours.decode(ids), s))
    assert n > len(pair.strings) // 2, "llama.cpp itself round-trips too few strings"
    assert not bad, _report(pair.name, "round trip", bad, n)


@pytest.mark.slow
def test_pieces_match_llama_cpp(pair):
    ours, ref = pair.ours, pair.ref
    assert ours.vocab_size == ref.n_tokens
    bad = []
    for i in range(ref.n_tokens):
        for special in (True, False):
            a, b = ours.piece_bytes(i, special=special), ref.piece(i, special)
            if a != b:
                bad.append((i, special, a, b))
    assert not bad, f"{pair.name}: {len(bad)} pieces differ, e.g. {bad[:5]}"
    assert ours.piece(ref.lib.llama_vocab_bos(ref.vocab)) == ref.piece(
        ref.lib.llama_vocab_bos(ref.vocab), True).decode("utf-8")


@pytest.mark.slow
def test_special_ids_match_llama_cpp(pair):
    ours, ref = pair.ours, pair.ref
    lib, v = ref.lib, ref.vocab

    def opt(x):
        return None if x < 0 else int(x)

    assert ours.bos_id == opt(lib.llama_vocab_bos(v))
    assert ours.eos_id == opt(lib.llama_vocab_eos(v))
    assert ours.add_bos == bool(lib.llama_vocab_get_add_bos(v))
    assert ours.add_eos == bool(lib.llama_vocab_get_add_eos(v))
    ref_eog = frozenset(i for i in range(ref.n_tokens) if lib.llama_vocab_is_eog(v, i))
    assert ours.eog_ids == ref_eog
    assert ours.eos_id in ours.eog_ids
    end_of_turn = {"gemma3-270m": "<end_of_turn>", "gemma4-vocab": "<turn|>"}.get(pair.name,
                                                                                "<|im_end|>")
    assert ours.encode(end_of_turn, False, True)[0] in ours.eog_ids
    assert ours.chat_template == pair.metadata.get("tokenizer.chat_template")


# --------------------------------------------------------------------------- no llama.cpp needed


def _fake_gguf(metadata: dict, tensors: dict | None = None):
    return SimpleNamespace(path=Path("/models/fake.gguf"), metadata=metadata,
                           tensors=tensors or {})


def test_none_tokenizer_decodes_placeholders_and_refuses_text():
    tok = Tokenizer.from_gguf(_fake_gguf({
        "general.architecture": "llama", "llama.vocab_size": 32,
        "tokenizer.ggml.model": "none"}))
    assert tok.vocab_size == 32
    assert tok.bos_id is None and tok.eos_id is None and tok.eog_ids == frozenset()
    assert tok.add_bos is False
    assert tok.decode([3, 7]) == "<tok:3><tok:7>"
    assert tok.piece(5) == "<tok:5>"
    with pytest.raises(ModelLoadError, match="fake.gguf.*tokenizer.ggml.model='none'"):
        tok.encode("hello")
    with pytest.raises(ValueError):
        tok.decode([32])


def test_synthetic_model_has_a_none_tokenizer(synth_model):
    from impdiff.engine.gguf_file import GGUFFile

    tok = Tokenizer.from_gguf(GGUFFile(synth_model("llama")))
    assert tok.vocab_size == 512
    assert tok.decode([0, 511]) == "<tok:0><tok:511>"
    with pytest.raises(ModelLoadError):
        tok.encode("text")


def test_unsupported_tokenizer_model_is_a_load_error():
    with pytest.raises(ModelLoadError, match="fake.gguf: tokenizer.ggml.model='t5'"):
        Tokenizer.from_gguf(_fake_gguf({"tokenizer.ggml.model": "t5",
                                        "tokenizer.ggml.tokens": ["a"]}))
    with pytest.raises(ModelLoadError, match="tokenizer.ggml.pre='nonesuch'"):
        Tokenizer.from_gguf(_fake_gguf({"tokenizer.ggml.model": "gpt2",
                                        "tokenizer.ggml.pre": "nonesuch",
                                        "tokenizer.ggml.tokens": ["a", "b", "ab"],
                                        "tokenizer.ggml.merges": ["a b"]}))
    with pytest.raises(ModelLoadError, match="tokenizer.ggml.tokens"):
        Tokenizer.from_gguf(_fake_gguf({"tokenizer.ggml.model": "llama"}))


def test_tiny_spm_vocab_by_hand():
    # ▁ab has the best score, so "ab ab" -> ▁ab ▁ab (with add_space_prefix); 'z' falls back to
    # bytes; <ctl> is only parsed with parse_special; <ud> (user-defined) always is.
    tokens = ["<unk>", "<s>", "</s>", "<ctl>", "<ud>", "▁", "a", "b", "▁a", "ab", "▁ab"]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3, 3, 4, 1, 1, 1, 1, 1, 1] + [6] * 256
    scores = [0.0, 0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -0.5] + [0.0] * 256
    tok = Tokenizer.from_gguf(_fake_gguf({
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types, "tokenizer.ggml.scores": scores}))
    byte = {b: tokens.index(f"<0x{b:02X}>") for b in range(256)}
    assert tok.encode("ab ab") == [1, 10, 10]
    assert tok.encode("ab ab", add_special=False) == [10, 10]
    assert tok.encode("z", add_special=False) == [5, byte[ord("z")]]
    assert tok.encode("a<ctl>b", add_special=False) == [8] + [byte[c] for c in b"<ctl>"] + [7]
    assert tok.encode("a<ctl>b", add_special=False, parse_special=True) == [8, 3, 5, 7]
    assert tok.encode("a<ud>b", add_special=False) == [8, 4, 5, 7]
    assert tok.decode([1, 10, 10]) == "<s> ab ab"
    assert tok.decode([1, 10, 10], skip_special=True) == " ab ab"
    assert tok.decode([10, 10]) == "ab ab"
    assert tok.eog_ids == frozenset({2})


def test_llama_cpp_reference_cases_of_the_gemma4_vocab():
    """llama.cpp's own expected ids for its Gemma 4 vocabulary (models/*.gguf.inp / .out)."""
    path = gemma4_vocab()
    if path is None or not path.exists():
        pytest.skip("ggml-vocab-gemma-4.gguf not found")
    from impdiff.engine.gguf_file import GGUFFile

    tok = Tokenizer.from_gguf(GGUFFile(path))
    texts = Path(str(path) + ".inp").read_text("utf-8").split("\n__ggml_vocab_test__\n")
    want = Path(str(path) + ".out").read_text("utf-8").split("\n")
    assert len(texts) >= 40
    bad = [(t, tok.encode(t, add_special=False), [int(x) for x in w.split()])
           for t, w in zip(texts, want)]
    bad = [b for b in bad if b[1] != b[2]]
    assert not bad, _report("gemma4-vocab", "llama.cpp's .out", bad, len(texts))


def test_tiny_gemma4_vocab_by_hand():
    # spaces are ▁ with no prefix; merges by rank ("a b" before "▁ ab"); a run of newlines is
    # one token when the vocabulary has it, else merged; 'z' falls back to bytes; BOS is added
    # even though the file says add_bos_token=false (llama.cpp overrides it for Gemma 4)
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "▁", "a", "b", "ab", "▁ab", "\n", "\n\n",
              "<turn|>"]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types = [3, 3, 3, 2, 1, 1, 1, 1, 1, 1, 1, 3] + [6] * 256
    tok = Tokenizer.from_gguf(_fake_gguf({
        "tokenizer.ggml.model": "gemma4", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": ["a b", "▁ ab"],
        "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.add_bos_token": False}))
    byte = {b: tokens.index(f"<0x{b:02X}>") for b in range(256)}
    assert tok.add_bos and tok.encode("ab ab") == [2, 7, 8]
    assert tok.encode("ab ab", add_special=False) == [7, 8]
    assert tok.encode("a\n\nb", add_special=False) == [5, 10, 6]
    assert tok.encode("\n\n\n", add_special=False) == [9, 9, 9]  # no merge makes \n\n
    assert tok.encode("az", add_special=False) == [5, byte[ord("z")]]
    assert tok.encode("é", add_special=False) == [byte[0xC3], byte[0xA9]]
    assert tok.encode("a<turn|>", add_special=False, parse_special=True) == [5, 11]
    assert tok.decode([2, 7, 8]) == "<bos>ab ab"
    assert tok.decode([2, 7, 8], skip_special=True) == "ab ab"
    assert tok.decode([byte[0xC3], byte[0xA9]]) == "é"
