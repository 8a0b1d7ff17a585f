#!/usr/bin/env python3
"""Writes the reference token ids the C++ tokenizer test compares against.

Runs Hugging Face `tokenizers` (the H200 device image has 0.23.2; it is not on PyPI-less dev
machines) on the DeepSeek-V3 tokenizer.json from scripts/fetch_tokenizer.sh, with the DeepSeek-V4
added tokens of spec/chat-encoding.md §1.1 appended (as actor::AddDeepSeekV4Tokens does), over a
fixed corpus: hand-picked tricky strings, the four official chat fixtures and seeded random
strings. Output: tokenizer_expectations.json ({"tokenizers_version", "cases": [{"text", "ids"}]}).

  python3 make_tokenizer_expectations.py TOKENIZER_JSON FIXTURE_DIR OUT_JSON
"""
import json
import random
import sys

import tokenizers

# Mirrors actor/deepseek_v4_tokens.cc: the V4 ids the V3 file lacks.
V4_ADDED_TOKENS = [
    (128821, "<think>"), (128822, "</think>"), (128825, "｜DSML｜"),
    (128828, "<｜latest_reminder｜>"), (128829, "<｜action｜>"), (128830, "<｜query｜>"),
    (128831, "<｜authority｜>"), (128832, "<｜domain｜>"), (128836, "<｜title｜>"),
    (128844, "<｜extracted_url｜>"), (128845, "<｜read_url｜>"),
]

HAND_PICKED = [
    "", " ", "a", "Hello world", "Hello! 毕老师！1 + 1 = 2 ĠÑĤÐ²ÑĬÑĢ",
    "价格は1000円です。", "    int x;", "12345", "1234567890", "3.14159", "1,234,567.89",
    "don't", "I'm", "we'll", "THEY'RE", "It's", "y'all'd've", "\t\tx", " \n  x", "a  b   c",
    "trailing   ", "   leading", "\n\n\n", "\r\n\r\nx", "x\r\n", "a\u00a0b", "a\u3000b",
    "a\u2003\u2003b", "\x0b\x0c\x85", "line1\nline2\n\n  indented\n\tTab",
    ">\n", "}\n\n", "!!!\n\n", "...", "?!", "a -> b => c", "x+=1;", "foo.bar(baz)", ".com", "'s",
    "https://example.com/path?q=1&r=2#frag", "user@example.org", "#include <vector>",
    "def f(x):\n    return x ** 2  # square\n", "for (int i = 0; i < n; ++i) {\n  a[i] = i;\n}\n",
    "SELECT * FROM t WHERE id = 42;", "$ echo $HOME && ls -la", "**bold** _it_ `code`",
    "| a | b |\n| :--- | ---: |", "你好，世界！", "深度求索公司创造。", "日本語のテキストです。",
    "カタカナとひらがな", "한국어 텍스트입니다", "Привет, мир!", "Γειά σου Κόσμε", "مرحبا بالعالم",
    "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก", "e\u0301te\u0301", "\u0301abc", "a\u0308\u0308",
    "😀", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦", "🇨🇳🇺🇸", "I ❤️ NY", "★☆✓✗", "∑∫√∞≈≠",
    "²³ ½ ¾ Ⅻ ⅷ ٣٤٥ ۱۲۳ ０１２", "𝐀𝐁𝐂 𝑥𝑦𝑧", "\u200b\u200c\u200d", "\ufeffBOM", "\ue000\uf8ff",
    "\u0378\u0379", "\x00\x01\x02\x7f", "a\x00b", "\U0001F600\U0010FFFD", "ｆｕｌｌｗｉｄｔｈ",
    "<｜begin▁of▁sentence｜>", "<｜User｜>hi<｜Assistant｜>", "<｜User｜><｜User｜>",
    "x<｜end▁of▁sentence｜>y", "<｜User", "｜User｜>", "<think>reason</think>answer",
    "<think></think>", "</think>", "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">",
    "｜DSML｜｜DSML｜", "<｜latest_reminder｜>2026", "<｜action｜>Search<｜end▁of▁sentence｜>",
    "<|EOT|>", "<｜place▁holder▁no▁5｜>", "<｜▁pad▁｜>", "<｜User｜>你好<｜Assistant｜><think>推理</think>答案<｜end▁of▁sentence｜>",
    "Simple arithmetic.</think>2 + 2 = 4.<｜end▁of▁sentence｜>",
    "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"calc\">\n<｜DSML｜parameter name=\"expr\" string=\"true\">2+2</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>",
    "a" * 300, " " * 100, "\n" * 50, "ab" * 200, "1" * 50, "你" * 100, "😀" * 30,
    "pneumonoultramicroscopicsilicovolcanoconiosis", "Supercalifragilisticexpialidocious!",
    "camelCaseIdentifierName snake_case_name kebab-case-name", "0x1F 0b1010 1e-9 -0.0",
    "2026-02-21,星期六,广州,App,中文", "【{cursor_id}†L{start_line_id}】", "“quoted” ‘single’ «guillemets»",
    "…—–", "¡Hola! ¿Qué tal?", "naïve café résumé", "Ǆǅǆ ǈ", "ſ ß ẞ", "İı",
]

# Characters random strings are drawn from: every pre-tokenizer class and its edge cases.
POOL = list("abcXYZ019 \t\n\r.,'!?-_()[]{}<>/\\\"#$%&*+=:;@^`|~") + [
    "\u00a0", "\u3000", "\u2028", "\u0085", "\u000b", "é", "\u0301", "ß", "你", "好", "は",
    "カ", "ー", "・", "゛", "한", "я", "ω", "ع", "\u0915", "\u093f", "😀", "👍", "\u200d",
    "\ufe0f", "²", "½", "Ⅻ", "٣", "０", "€", "©", "→", "∑", "★", "\x00", "\x1f", "\x7f",
    "\ue000", "\U0001d400", "\U0001f1e8", "…", "—", "“", "”", "【", "】", "｜", "▁",
    "<｜User｜>", "<｜end▁of▁sentence｜>", "<think>", "</think>", "｜DSML｜",
]


def corpus(fixture_dir):
    texts = list(HAND_PICKED)
    for i in range(1, 5):
        with open(f"{fixture_dir}/test_output_{i}.txt", encoding="utf-8") as f:
            texts.append(f.read())
    rng = random.Random(20261128)
    for _ in range(400):
        texts.append("".join(rng.choice(POOL) for _ in range(rng.randint(1, 40))))
    return texts


def load_tokenizer(path):
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    # HF numbers added tokens consecutively whatever their "id" says, so the V4 ids between the
    # V3 file's last id (128814) and ours are filled with markers that never occur in text.
    wanted = dict(V4_ADDED_TOKENS)
    for token_id in range(128815, max(wanted) + 1):
        content = wanted.get(token_id, f"<v4rl_unused_{token_id}>")
        spec["added_tokens"].append({
            "id": token_id, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": True})
    tok = tokenizers.Tokenizer.from_str(json.dumps(spec))
    for token_id, content in V4_ADDED_TOKENS:
        assert tok.token_to_id(content) == token_id, (content, tok.token_to_id(content))
    return tok


def main():
    tokenizer_json, fixture_dir, out = sys.argv[1:4]
    tok = load_tokenizer(tokenizer_json)
    cases = []
    for text in corpus(fixture_dir):
        ids = tok.encode(text, add_special_tokens=False).ids
        cases.append({"text": text, "ids": ids})
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"tokenizers_version": tokenizers.__version__, "cases": cases}, f,
                  ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
