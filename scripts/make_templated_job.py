#!/usr/bin/env python3
"""Write a templated OpenAI batch file of our own: the kind of job in which
requests share their instructions and much of their output.

    python3 scripts/make_templated_job.py --kind extract|label|docstring -n 64 -o job.jsonl [--seed 1]

  extract    structured extraction: a short made-up person record -> a JSON
             object with fixed keys (name, age, city, occupation, email)
  label      classification of a made-up product review into a fixed label set
  docstring  code edits: add a docstring and type hints to a small function

Records are generated from small word lists with a seeded RNG (nothing is
taken from a public benchmark). Greedy chat requests, max_tokens 96.
--response-format schema adds the kind's JSON schema (extract: the five
keys; label: the label set and a reason) as response_format json_schema,
object adds {"type": "json_object"}.
"""
import argparse
import json
import random

FIRST = ["Ana", "Bo", "Chen", "Dara", "Eli", "Femi", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lena", "Milo", "Nia",
         "Omar", "Pia", "Quin", "Rosa", "Sami", "Tess"]
LAST = ["Berg", "Costa", "Dahl", "Evans", "Fox", "Gray", "Hill", "Ito", "Jones", "Khan", "Lind", "Moreau", "Novak",
        "Ortiz", "Park", "Quist", "Reyes", "Stone", "Tran", "Upton"]
CITY = ["Lisbon", "Oslo", "Lagos", "Lima", "Seoul", "Quito", "Tunis", "Riga", "Perth", "Porto", "Hanoi", "Kyiv"]
JOB = ["nurse", "welder", "teacher", "baker", "pilot", "chemist", "plumber", "designer", "farmer", "editor"]
PRODUCT = ["kettle", "backpack", "desk lamp", "phone case", "blender", "rain jacket", "keyboard", "tent"]
GOOD = ["works perfectly", "exceeded my expectations", "is sturdy and well made", "arrived early and works great"]
BAD = ["broke after two days", "is flimsy and overpriced", "stopped working in a week", "never arrived complete"]
MEH = ["is fine for the price", "does the job, nothing special", "is okay but the color is off"]
FUNCS = [("area", "w, h", "return w * h"), ("clamp", "x, lo, hi", "return max(lo, min(x, hi))"),
         ("mean", "xs", "return sum(xs) / len(xs)"), ("is_even", "n", "return n % 2 == 0"),
         ("greet", "name", "return 'Hello, ' + name"), ("last", "xs", "return xs[-1]"),
         ("square", "x", "return x * x"), ("join_words", "words", "return ' '.join(words)")]


def extract(rng, i):
    f, l, c, j = rng.choice(FIRST), rng.choice(LAST), rng.choice(CITY), rng.choice(JOB)
    age = rng.randint(21, 70)
    rec = f"{f} {l} is a {age}-year-old {j} who lives in {c}. Contact: {f.lower()}.{l.lower()}@example.org."
    return ("Extract the person's details from the record below. Answer with one JSON object with exactly the "
            "keys \"name\", \"age\", \"city\", \"occupation\" and \"email\", and nothing else.\n\nRecord: " + rec)


def label(rng, i):
    p = rng.choice(PRODUCT)
    kind = rng.choice(["pos", "neg", "mix"])
    text = rng.choice(GOOD if kind == "pos" else BAD if kind == "neg" else MEH)
    return ("Classify the sentiment of this product review as one of: positive, negative, neutral. Answer with "
            "a JSON object {\"label\": ..., \"reason\": ...} with a one-sentence reason.\n\nReview: The " + p + " "
            + text + ".")


def docstring(rng, i):
    name, args, body = rng.choice(FUNCS)
    return ("Add type hints and a one-line docstring to this Python function, and return the whole function "
            "in a code block:\n\ndef " + name + "(" + args + "):\n    " + body)


SCHEMAS = {
    "extract": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 40}, "age": {"type": "integer"},
        "city": {"type": "string", "maxLength": 30}, "occupation": {"type": "string", "maxLength": 30},
        "email": {"type": "string", "maxLength": 60}},
        "required": ["name", "age", "city", "occupation", "email"], "additionalProperties": False},
    "label": {"type": "object", "properties": {
        "label": {"enum": ["positive", "negative", "neutral"]}, "reason": {"type": "string", "maxLength": 200}},
        "required": ["label", "reason"], "additionalProperties": False},
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=["extract", "label", "docstring"], default="extract")
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--response-format", choices=["none", "schema", "object"], default="none")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    make = {"extract": extract, "label": label, "docstring": docstring}[a.kind]
    with open(a.output, "w") as f:
        for i in range(a.n):
            body = {"messages": [{"role": "user", "content": make(rng, i)}], "max_tokens": a.max_tokens,
                    "temperature": 0}
            if a.response_format == "object":
                body["response_format"] = {"type": "json_object"}
            elif a.response_format == "schema":
                if a.kind not in SCHEMAS:
                    ap.error(f"no schema for --kind {a.kind}")
                body["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": a.kind, "schema": SCHEMAS[a.kind], "strict": True}}
            f.write(json.dumps({"custom_id": f"{a.kind}-{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": body}) + "\n")


if __name__ == "__main__":
    main()
