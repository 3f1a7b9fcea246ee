#!/usr/bin/env python3
"""make_token_fixtures.py - reference token ids for tests/test_tokenizer.c.

Loads the vocabulary of a GGUF model with llama.cpp (PyPI package
llama-cpp-python, vocab_only=True) and writes tests/fixtures/tokens.json:

  texts:  for each sample text, its bytes (hex and, for reading, as text),
          the add_bos flag given to llama_tokenize (its add_special: BOS is
          only added when the vocabulary's add_bos_token is set), the
          parse_special flag and the token ids llama.cpp produces;
  pieces: for a set of ids, the bytes llama.cpp detokenizes each to
          (special=True, so control tokens give their text), hex-encoded;
  chat:   the prompt the model's own tokenizer.chat_template (rendered with
          jinja2, add_generation_prompt=True) gives for sample messages
          (GEMMA_TEMPLATE for a Gemma vocabulary without a template).

Usage: python3 scripts/make_token_fixtures.py [--model PATH] [--out PATH]
"""
import argparse
import json
import sys

LONG_PROSE = (
    "The quick brown fox jumps over the lazy dog. Speculative decoding lets a "
    "small draft model propose several tokens that a larger model verifies in "
    "one pass; when most proposals are accepted, generation gets faster. "
)
LONG_CODE = (
    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
    "    return a\n\nprint([fib(i) for i in range(10)])  # 0 1 1 2 3 5 8 13 21 34\n"
)

# (name, text, add_bos, parse_special)
TEXTS = [
    ("hello", "Hello world", False, False),
    ("hello_bos", "Hello world", True, False),
    ("prose", "It was the best of times, it was the worst of times; it was the age "
              "of wisdom, it was the age of foolishness. Mr. Smith (aged 42) said: "
              "\"We'll see.\"", False, False),
    ("python", "import os\n\nclass Foo:\n    def bar(self, x: int) -> int:\n"
               "        if x > 0:\n            return x * 2  # double\n"
               "        return -x\n", False, False),
    ("c_tabs", "#include <stdio.h>\n\nint main(void)\n{\n\tint i;\n\tfor (i = 0; i < 10; i++) {\n"
               "\t\tprintf(\"%d\\n\", i);\n\t}\n\treturn 0;\n}\n", False, False),
    ("french", "Le cœur déçu mais l'âme plutôt naïve, Louÿs rêva de crapaüter en canoë "
               "au delà des îles, près du mälström où brûlent les novæ. À bientôt !",
     False, False),
    ("german", "Falsches Üben von Xylophonmusik quält jeden größeren Zwerg. Die Straße "
               "heißt Äußere Mühlenstraße.", False, False),
    ("russian", "Съешь же ещё этих мягких французских булок, да выпей чаю. ПРИВЕТ мир!",
     False, False),
    ("chinese", "我能吞下玻璃而不伤身体。你好，世界！今天是2024年。", False, False),
    ("japanese", "いろはにほへと ちりぬるを。日本語のテキスト、カタカナも「テスト」です。",
     False, False),
    ("arabic", "مرحبا بالعالم، كيف حالك؟ الرقم ٣٤٥", False, False),
    ("hindi", "नमस्ते दुनिया, आप कैसे हैं? संख्या १२३", False, False),
    ("korean", "안녕하세요 세계! 한국어 문장입니다.", False, False),
    ("digits", "12345678", False, False),
    ("pi", "3.14159", False, False),
    ("million", "1,000,000", False, False),
    ("numbers_mixed", "Version 2.0.1 released 2024-01-15 at 10:30pm, costs $1,299.99 "
                      "(≈€1.2k), x² y³ ½", False, False),
    ("digit_spaces", "a   1 x 1 2  3   4\t5", False, False),
    ("multi_space", "a  b   c    d     e", False, False),
    ("tabs", "\tindented\n\t\tmore\ttabs\t", False, False),
    ("newlines", "line1\nline2\n\n\nline5\r\nwindows\r\n", False, False),
    ("newlines_only", "\n\n\n", False, False),
    ("leading_spaces", "   leading spaces", False, False),
    ("trailing_spaces", "trailing spaces   ", False, False),
    ("both_spaces", "  both  \n  ", False, False),
    ("single_space", " ", False, False),
    ("empty", "", False, False),
    ("empty_bos", "", True, False),
    ("emoji", "I love 🍕 and 🎉🎉! 😀😃", False, False),
    ("emoji_zwj_flags", "Family: 👨\u200d👩\u200d👧\u200d👦, flags: 🇫🇷🇩🇪🇯🇵, skin: 👍🏽 ❤️",
     False, False),
    ("contractions", "I'm sure they'll say it's fine, but we've seen what you'd do. "
                     "DON'T! I'M. She's here; they're gone.", False, False),
    ("contractions_bare", "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'x", False, False),
    ("punctuation", "Wait... what?! (really) [yes] {no} <tag/> @user #hash $5 %20 ^_^ "
                    "~/path | a&&b || c; x->y => z :: 'q' \"dq\" `bt` —–- «» ¡¿ …",
     False, False),
    ("unicode_misc", "naïve café ﬁ ligature, Ω≈ç√∫, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢, ‘curly’ “quotes”, "
                     "non\u00a0breaking\u2003em\u3000space, zero\u200bwidth", False, False),
    ("control_bytes", "nul\x00byte \x01\x02 del\x7f end", False, False),
    ("gpt2_mapped_chars", "Ġ Ċ ĉ ł", False, False),
    ("url", "https://example.com/path?query=1&b=2#frag", False, False),
    ("markdown", "# Title\n\n- item 1\n- item 2\n\n```python\nprint('hi')\n```\n",
     False, False),
    ("json", "{\"key\": \"value\", \"n\": [1, 2, 3], \"nested\": {\"a\": null}}",
     False, False),
    ("repeats", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa ============ ------ !!!!!!", False, False),
    ("special_parsed", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", False, True),
    ("special_unparsed", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", False, False),
    ("special_adjacent", "<|endoftext|><|im_end|>text<file_sep>more<reponame>x <|im_start", False, True),
    ("chat_full", "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained "
                  "by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                  "<|im_start|>assistant\n", False, True),
    ("long_4k", (LONG_PROSE + LONG_CODE) * 11, False, False),
    # more code, and the special tokens of Qwen2.5-Coder (plain text for SmolLM2)
    ("rust", "fn main() {\n    let v: Vec<u32> = (1..=10).map(|x| x * x).collect();\n"
             "    println!(\"{:?}\", v);\n}\n", False, False),
    ("javascript", "const add = (a, b) => a + b;\nexport default async function f() {\n"
                   "  await fetch('/api?id=42');\n}\n", False, False),
    ("go", "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"héllo\", 3.5e-7)\n}\n",
     False, False),
    ("sql_ws", "SELECT id,\r\n       name\r\n  FROM users   \n\n  WHERE age >= 18;\n\n\n", False, False),
    ("contractions_upper", "IT'S WE'RE YOU'VE I'M WE'LL HE'D 'Ll 'rE", False, True),
    ("fim_specials", "<|fim_prefix|>def f(x):\n<|fim_suffix|>\n    return y<|fim_middle|>"
                     "<|file_sep|>main.py<|repo_name|>demo<|endoftext|>", False, True),
    ("eog_names", "a</s>b <|im_end|> <reponame>x", False, True),
]

CHATS = [
    (None, "What is the capital of France?"),
    ("You are a pirate.", "Hello there!\nHow are you?"),
]


# a multi-turn conversation (no system message: the template's default applies)
CONVERSATION = [("user", "hi"), ("assistant", "Hello!"), ("user", "Bye")]


# Gemma's chat format, as the Gemma 3 instruction models' Jinja template
# writes it (a system message goes before the first user turn; contents
# trimmed; roles "user" / "model"), for a GGUF that has Gemma's turn tokens
# but no tokenizer.chat_template (Gemma-3-270M on PyPI). Without the
# template's leading {{ bos_token }}: llama.cpp and selfspec both add BOS at
# tokenization (tokenizer.ggml.add_bos_token).
GEMMA_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] | trim + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{{ '<start_of_turn>model\n' }}"
)


def render_messages(template, bos, eos, msgs):
    """Render the model's Jinja chat template for a list of messages."""
    import jinja2.sandbox
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=msgs, add_generation_prompt=True,
                                            bos_token=bos, eos_token=eos)


def render_chat(template, bos, eos, system, user):
    """Render the model's Jinja chat template for one exchange."""
    msgs = ([{"role": "system", "content": system}] if system is not None else [])
    msgs.append({"role": "user", "content": user})
    return render_messages(template, bos, eos, msgs)


def piece_ids(llm, fixtures):
    """Ids whose pieces are recorded: the first 32, every id in the texts,
    and a stride through the whole vocabulary."""
    ids = set(range(32))
    for f in fixtures:
        ids.update(f["ids"])
    ids.update(range(0, llm.n_vocab(), 211))
    return sorted(ids)


def token_piece(llama_cpp, llm, token):
    """llama_token_to_piece with a buffer large enough for any piece (the
    binding's detokenize uses 32 bytes and silently returns b'' for longer
    pieces, such as Qwen2.5's 81-byte runs of slashes)."""
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    size = 1024
    buf = (llama_cpp.ctypes.c_char * size)()
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, True)
    assert 0 <= n <= size, n
    return bytes(buf[:n])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", default="tests/fixtures/tokens.json")
    args = ap.parse_args()

    import llama_cpp
    llm = llama_cpp.Llama(model_path=args.model, vocab_only=True, verbose=False)
    meta = llm.metadata

    fixtures = []
    for name, text, add_bos, special in TEXTS:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)
        fixtures.append({"name": name, "text": text, "hex": text.encode("utf-8").hex(),
                         "add_bos": add_bos, "parse_special": special, "ids": ids})

    pieces = [{"id": i, "hex": token_piece(llama_cpp, llm, i).hex()}
              for i in piece_ids(llm, fixtures)]

    template = meta.get("tokenizer.chat_template")
    if not template and len(llm.tokenize(b"<start_of_turn>", add_bos=False, special=True)) == 1:
        template = GEMMA_TEMPLATE
    bos = llm.detokenize([llm.token_bos()], special=True).decode()
    eos = llm.detokenize([llm.token_eos()], special=True).decode()
    chats = [{"system": s, "user": u, "prompt": render_chat(template, bos, eos, s, u)}
             for s, u in CHATS] if template else []

    conversation = {
        "messages": [{"role": r, "content": c} for r, c in CONVERSATION],
        "prompt": render_messages(template, bos, eos,
                                  [{"role": r, "content": c} for r, c in CONVERSATION]),
    } if template else None

    # vocabulary facts: size, BOS/EOS, add_bos, and every end-of-generation id
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    info = {
        "n_vocab": llm.n_vocab(),
        "bos": llm.token_bos(),
        "eos": llm.token_eos(),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "eog": [i for i in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, i)],
    }

    out = {
        "model": args.model.split("/")[-1],
        "vocab": info,
        "conversation": conversation,
        "generator": "llama-cpp-python %s (vocab_only), scripts/make_token_fixtures.py"
                     % llama_cpp.__version__,
        "texts": fixtures,
        "pieces": pieces,
        "chat": chats,
    }
    with open(args.out, "w", encoding="utf-8") as fp:
        json.dump(out, fp, ensure_ascii=False, indent=1)
        fp.write("\n")
    print("wrote %s: %d texts, %d pieces, %d chat prompts"
          % (args.out, len(fixtures), len(pieces), len(chats)), file=sys.stderr)


if __name__ == "__main__":
    main()
