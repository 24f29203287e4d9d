"""`moss data synth` writes the same bytes for every recipe as the generator it grew from.

The synthetic corpus is part of every speedrun and benchmark result: a change to
its code that moves one byte changes the trained models. These hashes were
recorded from commit 8326652's generator (mosslm/data/synth.py, synth_plugins.py
and synth_tools.py, before they became the mosslm.data.synth package); a change
that is meant to alter the corpus must record new ones and say why.

Re-recorded once since: the plugins recipe's sft files, when the knowledge base's
Search snippets became query-focused (their sentences ordered by the query terms
they hold), which reorders the sentences inside the Search results.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mosslm.cli import main

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "examples" / "tools"

# (recipe, seed) -> {file: sha256}, at --scale 0.05; recorded from commit 8326652's generator
# (the plugins sft files: from query-focused snippets).
CORPUS_SHA256 = {
    ("calculate", 0): {
        "eval.jsonl": "a7932c3ee8cc1ed261c8e771723644daa176733d1a162e547b9b628d9df026ea",
        "manifest.json": "09cae21d43b03720ee58762187a50ef90c7144a84ab4ba0639df6ab63ca09477",
        "pretrain.jsonl": "34949b5402f48df28cc742bc26d67fb36fa8a2ae8adf2f569910c65a1ecadc3e",
        "sft_train.jsonl": "72a869f8d08d8a7bc4472a6432ccc82fd407b01d93f5b26f7db90b1fdb655937",
        "sft_val.jsonl": "16ee481d70e27e889fae73501068a3fde0e170fee950c5a1315849cf3ddd1a8a",
    },
    ("calculate", 7): {
        "eval.jsonl": "44122f69e04fab60ac512f380ba3d12874adb5997b4dba62ab924357b7b9e846",
        "manifest.json": "d4985308e4c790c2c5de407f109787d2125304e7cd41d62c173fed471e897b56",
        "pretrain.jsonl": "3e7b95e2ea87aefc1ef689227d24b36b22a888bec63cc939880f2458d1ce23cc",
        "sft_train.jsonl": "8766b47d64c9ef0fb4f893069aaad740206414f3f058edb89066e9448eec20c4",
        "sft_val.jsonl": "238c4ea7658a623802c9d4eec06e80fd9e7da3f7ec9622abdfff83ee94e95210",
    },
    ("plugins", 0): {
        "eval.jsonl": "93763fc7ff37c5dacb5e64fdc0dd7385b4d6c74e331fd6da146bcda12ca2fd48",
        "manifest.json": "399adfbc2ce516b710fea1f015dac49447387b114c3db844e0a4b52c2854e7c9",
        "pretrain.jsonl": "00546b86ff20f5f9c920c5e85f8f0cd10037c7fa785085f4e65994b0d478a701",
        "sft_train.jsonl": "a6fe35b462444c12a18a946b0228dd6e561dc6b97cd36d47294e5eac6d4bd735",
        "sft_val.jsonl": "443e7681f6a28f8720e7ae1a30239f76b3a687129466249399a3b2bfa8926534",
    },
    ("plugins", 7): {
        "eval.jsonl": "9c32dcc1e1f11e07b9758a2723e85262ad02b153339fe60afaef598374b87380",
        "manifest.json": "ce9f8ae3791c91f32dec3f4d23e5f1c63b34b1a71beedab70a5d68892621b1d3",
        "pretrain.jsonl": "63d4911206d0aed8b1d3eda7e5bd712b11596faf48e34693b686f791fba61b89",
        "sft_train.jsonl": "609b908e28f65a9e8952b91171cc1167fa92a6b90b0baec4575213bf5eac015f",
        "sft_val.jsonl": "38cac018427a0e59db70a59e3cb3ad634a6c8edfcb15d1468e30c9e174720c0b",
    },
}
# --recipe tool on examples/tools/ (order_status.py, questions.jsonl) with --plugins Calculate.
TOOL_SHA256 = {
    0: {
        "tool.eval.jsonl": "9c368e880a07d34ca838608db7ec7394853429c99c1fc9b668f94813ef626934",
        "tool.jsonl": "5417352b1b662d03b5653badddbd3ec6ccfd2b45c5cccdf1b08d30da6b1712a0",
    },
    7: {
        "tool.eval.jsonl": "be745a6359ce8d82137d121b08f8e3536752882e692c1bd0b211cfbfda9db9dd",
        "tool.jsonl": "d7d3fb533a2f1ca11d7fade2b94482036d863bbf565d98a74e5709efc708917d",
    },
}


def sha256_of_files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("recipe,seed", sorted(CORPUS_SHA256))
def test_corpus_bytes_are_unchanged(recipe, seed, tmp_path):
    out = tmp_path / "corpus"
    assert main(["data", "synth", "--recipe", recipe, "--seed", str(seed), "--scale", "0.05",
                 "--out", str(out)]) == 0
    assert sha256_of_files(out) == CORPUS_SHA256[(recipe, seed)]


@pytest.mark.parametrize("seed", sorted(TOOL_SHA256))
def test_tool_recipe_bytes_are_unchanged(seed, tmp_path):
    out = tmp_path / "tools"
    assert main(["data", "synth", "--recipe", "tool", "--plugin-file", str(TOOLS / "order_status.py"),
                 "--questions", str(TOOLS / "questions.jsonl"), "--plugins", "Calculate", "--seed", str(seed),
                 "--out", str(out / "tool.jsonl")]) == 0
    assert sha256_of_files(out) == TOOL_SHA256[seed]


@pytest.mark.parametrize("hash_seed", ["2", "11"])
def test_corpus_bytes_do_not_depend_on_the_hash_seed(hash_seed, tmp_path):
    """Python salts str hashes per process, so a set's order differs between runs; no byte may follow it
    (hash seed 2 once reordered two Search sentences whose weights summed in a different order)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "corpus"
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    subprocess.run([sys.executable, "-m", "mosslm", "data", "synth", "--recipe", "plugins", "--seed", "0",
                    "--scale", "0.05", "--out", str(out)], env=env, check=True, capture_output=True, cwd=REPO)
    assert sha256_of_files(out) == CORPUS_SHA256[("plugins", 0)]
