"""The synthetic speedrun corpus: bilingual pretraining text, MOSS SFT conversations
with the Search, Calculate and Solve plugins, and a held-out eval set, all from
hand-written templates (`moss data synth`).

Modules, in the order they build on each other (no cycles):
  tables      the text tables in mosslm/resources/synth/*.json
  heldout     the hash splits that keep eval items out of every training file
  arithmetic  the Calculate plugin's expressions, questions, replies and follow-ups
  chat        identity, small talk, facts, refusals, benign look-alikes, multi-turn
  plugins     Solve, Search over the bundled handbook, two commands in one turn
  pretrain    pretraining documents
  corpus      the recipes and `generate_corpus`
  tools       conversations for a company's own tool (`--recipe tool`)
"""

from __future__ import annotations

from ...plugins.calculator import calculate  # benchmarks/dpo_values.py reads synth.calculate
from ..text import language_of
from .arithmetic import arith_question, arith_reply, arithmetic_turn, follow_up, split_expr
from .chat import (BENIGN_EVAL, BENIGN_OPENER, EVERYDAY_ANSWER, HARMFUL, HARMFUL_EVAL, REFUSAL, benign_turn, chat_turn,
                   fact_turn, identity_turn, is_refusal, refusal_turn, request_text, smalltalk_turn, with_opener)
from .corpus import RECIPES, Recipe, eval_items, generate_corpus, sft_conversations
from .heldout import HELDOUT_PERMILLE, expr_key, identity_heldout, is_heldout
from .tables import random_lang


__all__ = [
    "BENIGN_EVAL", "BENIGN_OPENER", "EVERYDAY_ANSWER", "HARMFUL", "HARMFUL_EVAL", "HELDOUT_PERMILLE", "RECIPES",
    "REFUSAL", "Recipe", "arith_question", "arith_reply", "arithmetic_turn", "benign_turn", "calculate", "chat_turn",
    "eval_items", "expr_key", "fact_turn", "follow_up", "generate_corpus", "identity_heldout", "identity_turn",
    "is_heldout", "is_refusal", "language_of", "random_lang", "refusal_turn", "request_text", "sft_conversations",
    "smalltalk_turn", "split_expr", "with_opener",
]
