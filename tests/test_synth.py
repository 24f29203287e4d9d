"""The synthetic speedrun corpus: determinism, protocol validity, held-out splits."""

from __future__ import annotations

import json
import re

import pytest

from mosslm import protocol
from mosslm.cli import main
from mosslm.data.synth import RECIPES, chat, generate_corpus, heldout, is_refusal, language_of, plugins
from mosslm.data.synth.arithmetic import split_expr
from mosslm.plugins import kb
from mosslm.plugins.calculator import calculate
from mosslm.plugins.registry import BUILTINS, kb_search, run_commands
from mosslm.plugins.solve import _solve_now

FILES = ("pretrain.jsonl", "sft_train.jsonl", "sft_val.jsonl", "eval.jsonl", "manifest.json")
SFT = ("sft_train.jsonl", "sft_val.jsonl")
META = protocol.meta_instruction("mosslm", ["Search", "Calculate", "Solve"])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    manifest = generate_corpus(out, seed=0, scale=0.05, recipe="plugins")
    return out, manifest


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def conversations(out, name):
    return [protocol.from_moss_json(r) for r in read_jsonl(out / name)]


def train_and_val(out):
    return conversations(out, "sft_train.jsonl") + conversations(out, "sft_val.jsonl")


def test_same_seed_same_bytes_other_seed_differs(corpus, tmp_path):
    out, _ = corpus
    again, other = tmp_path / "again", tmp_path / "other"
    generate_corpus(again, seed=0, scale=0.05, recipe="plugins")
    generate_corpus(other, seed=1, scale=0.05, recipe="plugins")
    for name in FILES:
        assert (out / name).read_bytes() == (again / name).read_bytes(), name
    for name in ("pretrain.jsonl", "sft_train.jsonl", "sft_val.jsonl", "eval.jsonl"):
        assert (out / name).read_bytes() != (other / name).read_bytes(), name
    assert not list(out.glob(".*")), "temporary files left behind"


def test_manifest_matches_files(corpus):
    out, manifest = corpus
    assert json.loads((out / "manifest.json").read_text(encoding="utf-8")) == manifest
    assert manifest["seed"] == 0 and manifest["scale"] == 0.05
    for name in FILES[:-1]:
        assert manifest["files"][name]["records"] == len(read_jsonl(out / name))
        assert manifest["files"][name]["bytes"] == (out / name).stat().st_size
    for name in SFT:
        cats = {}
        for rec in read_jsonl(out / name):
            cats[rec["category"]] = cats.get(rec["category"], 0) + 1
        assert manifest["files"][name]["categories"] == cats


def test_every_category_present_at_small_scale(corpus):
    _, manifest = corpus
    for name in SFT:
        assert set(manifest["files"][name]["categories"]) == set(RECIPES["plugins"].sft_shares)
    tasks = manifest["files"]["eval.jsonl"]["tasks"]
    assert tasks["arithmetic"] >= 10 and tasks["identity"] >= 8
    assert tasks["refusal"] >= 8 and tasks["benign"] >= 8


def test_records_parse_render_and_use_the_plugin_scaffold(corpus):
    out, _ = corpus
    for name in SFT:
        for record in read_jsonl(out / name):
            conv = protocol.from_moss_json(record)
            assert conv.meta == META
            assert conv.extra["category"] in RECIPES["plugins"].sft_shares
            assert protocol.to_moss_json(conv) == record
            assert conv.render().startswith(META)
            for turn in conv.turns:
                assert turn.plugin and turn.reply
                if turn.commands is None:
                    assert turn.thoughts is None and turn.results is None


def test_tool_results_are_the_real_plugins(corpus, tmp_path):
    """Every Results block equals what the agent's real plugins return (sympy, a fresh KB index)."""
    out, _ = corpus
    db = tmp_path / "handbook.sqlite"
    kb.build(db, [str(kb.HANDBOOK)])
    real = {"Calculate": BUILTINS["Calculate"], "Search": BUILTINS["Search"].__class__(
        **{**BUILTINS["Search"].__dict__, "run": lambda q: kb_search(db, q)}),
        "Solve": BUILTINS["Solve"].__class__(**{**BUILTINS["Solve"].__dict__, "run": _solve_now})}
    used = {}
    for conv in train_and_val(out):
        for turn in conv.turns:
            commands = turn.parsed_commands()
            if not commands:
                continue
            for c in commands:
                used[c.name] = used.get(c.name, 0) + 1
            assert turn.results == run_commands(commands, real)
            assert "No result." not in turn.results
            if len(commands) == 1 and commands[0].name == "Calculate":
                value = calculate(commands[0].arg)
                assert value in turn.reply and commands[0].arg in turn.thoughts
            if commands[0].name == "Search":  # the reply cites the snippet it copies
                n = protocol.citations(turn.reply)
                assert n and re.sub(r"<sup><\|\d+\|></sup>", "", turn.reply)[:-1] in turn.results
    assert used["Calculate"] > 100 and used["Solve"] > 20 and used["Search"] > 20
    assert any(len(t.parsed_commands()) == 2 for c in train_and_val(out) for t in c.turns)


def test_known_solutions_match_sympy():
    import random

    rng = random.Random(5)
    for _ in range(60):
        eq = plugins.equation(rng)
        assert plugins.KNOWN_SOLUTIONS[eq] == _solve_now(eq), eq


def test_solve_and_search_eval_items_are_held_out(corpus):
    out, _ = corpus
    humans = {t.human for c in train_and_val(out) for t in c.turns}
    args = {c.arg for conv in train_and_val(out) for t in conv.turns for c in t.parsed_commands()}
    items = read_jsonl(out / "eval.jsonl")
    solve = [i for i in items if i["task"] == "solve"]
    search = [i for i in items if i["task"] == "search"]
    assert solve and search
    for item in solve:
        assert plugins.equation_heldout(item["expr"]) and item["expr"] not in args
        assert item["expected"] == _solve_now(item["expr"])
    for item in search:
        assert item["question"] not in humans
    # A Search command names the handbook page of the question's topic; most Search turns ask
    # about a span of a handbook sentence, so their questions are nearly all distinct.
    docs, _ = plugins.handbook()
    titles = {d["title"] for d in docs.values()}
    searches = [t for conv in train_and_val(out) for t in conv.turns
                if [c.name for c in t.parsed_commands()] == ["Search"]]
    assert searches and {t.parsed_commands()[0].arg for t in searches} <= titles
    questions = [t.human for t in searches]
    assert len(set(questions)) > 0.6 * len(questions)


def test_search_turns_about_spans_name_the_page_and_answer_from_its_text():
    import random

    docs, _ = plugins.handbook()
    by_title = {d["title"]: d for d in docs.values()}
    rng = random.Random(3)
    for lang in ("zh", "en"):
        for named in (True, False):
            for _ in range(15):
                turn = plugins.span_search_turn(rng, lang, named)
                [command] = turn.parsed_commands()
                doc = by_title[command.arg]
                assert doc["lang"] == lang
                if named:
                    assert any(alias in turn.human for alias in doc["aliases"])
                sentence = re.sub(r"<sup><\|\d+\|></sup>", "", turn.reply)
                assert sentence in " ".join(doc["text"].split()), (turn.human, turn.reply)


def test_search_turns_with_the_questions_key_terms_mostly_cite_the_first_snippets_leading_sentence():
    """query="terms": the query is the question's key terms and the reply cites the first snippet's
    sentence that holds the asked fact; the query-focused snippet puts that sentence first unless the
    question words it differently from the page (Chinese 流入 for the page's 注入)."""
    _, questions = plugins.handbook()
    for lang, leading_share in (("zh", 0.75), ("en", 1.0)):
        asked = {q["question"]: q for q in questions if q["split"] == "train" and q["lang"] == lang}
        turns = plugins.search_training_turns(lang, query="terms")
        assert len(turns) == len(asked) == 270
        leading = 0
        for turn in turns:
            q = asked[turn.human]
            [command] = turn.parsed_commands()
            assert command.arg == q["query"] and q["query"] in turn.thoughts
            first = re.match(r'<\|1\|>: "(.*)"$', turn.results.split("\n")[1]).group(1)
            sentence = re.sub(r"<sup><\|1\|></sup>", "", turn.reply)
            assert sentence in first and q["answer"] in sentence
            leading += first.startswith(sentence)
        assert leading >= leading_share * len(turns), (lang, leading)
    with pytest.raises(ValueError, match="query is one of"):
        plugins.search_turn(questions[0], query="question")


def _train_keys(out):
    keys = set()
    for conv in train_and_val(out):
        for turn in conv.turns:
            for command in turn.parsed_commands():
                if command.name != "Calculate":
                    continue
                parts = split_expr(command.arg)
                assert parts is not None, command.arg
                keys.add(heldout.expr_key(*parts))
    return keys


def test_eval_arithmetic_is_held_out(corpus):
    out, _ = corpus
    train = _train_keys(out)
    assert not any(heldout.is_heldout(*split_expr(k)) for k in train)
    items = [i for i in read_jsonl(out / "eval.jsonl") if i["task"] == "arithmetic"]
    for item in items:
        parts = split_expr(item["expr"])
        assert heldout.is_heldout(*parts) and heldout.expr_key(*parts) not in train
        assert item["expected"] == calculate(item["expr"])
    assert any("history" in i for i in items)


_STATEMENT = re.compile(r"(?<![\w/^.(])(\d+(?:\.\d+)?) ?(加|减|乘以|除以|plus|minus|times|divided by|[-+×÷*/]) ?(\d+) ?(?:等于|is|=) ?(-?\d)")
_OP = {"加": "+", "plus": "+", "减": "-", "minus": "-", "乘以": "*", "times": "*", "×": "*",
       "除以": "/", "divided by": "/", "÷": "/"}


def test_pretraining_text_holds_no_eval_arithmetic(corpus):
    out, _ = corpus
    docs = [r["text"] for r in read_jsonl(out / "pretrain.jsonl")]
    assert len(docs) >= 100
    assert {language_of(d) for d in docs} == {"zh", "en"}
    found = 0
    for doc in docs:
        for a, op, b, _ in _STATEMENT.findall(doc):
            found += 1
            assert not heldout.is_heldout(a, _OP.get(op, op), b), (a, op, b)
    assert found > 100


def test_replies_follow_the_language_of_the_question(corpus):
    out, _ = corpus
    switched = 0
    for conv in train_and_val(out):
        langs = set()
        for turn in conv.turns:
            assert language_of(turn.reply) == language_of(turn.human), (turn.human, turn.reply)
            if turn.thoughts:
                assert language_of(turn.thoughts) == language_of(turn.human)
            langs.add(language_of(turn.human))
        switched += len(langs) > 1
        if conv.extra["category"] == "language":
            assert len(langs) == 2
    assert switched > 0
    for item in read_jsonl(out / "eval.jsonl"):
        assert language_of(item["question"]) == item["lang"], item


def test_identity_refusal_and_benign_replies(corpus):
    out, _ = corpus
    seen = set()
    for conv in train_and_val(out):
        category = conv.extra["category"]
        for turn in conv.turns:
            if category == "identity":
                assert "MOSS" in turn.reply
            if category == "refusal":
                assert is_refusal(turn.reply), turn.reply
                assert turn.reply.startswith("抱歉" if language_of(turn.human) == "zh" else "Sorry")
            else:
                assert not is_refusal(turn.reply), turn.reply
        seen.add(category)
    assert {"identity", "refusal", "benign"} <= seen


def test_eval_questions_are_not_training_questions(corpus):
    out, _ = corpus
    humans = {t.human for c in train_and_val(out) for t in c.turns}
    items = read_jsonl(out / "eval.jsonl")
    for item in items:
        assert set(item) >= {"task", "lang", "question", "expected"}
        assert item["task"] in ("arithmetic", "identity", "refusal", "benign", "solve", "search", "multi")
        if item["task"] in ("identity", "refusal", "benign"):
            assert item["expected"] is None and item["question"] not in humans
    # Held-out requests (new action/target pairs, new harmless objects) never reach training.
    text = "\n".join(humans)
    for zh, en in [h[:2] for h in chat.HARMFUL_EVAL] + chat.BENIGN_EVAL:
        assert zh not in text and en not in text
    # ...while every word of a held-out harmful pair is seen in training in other pairs.
    assert not {h[:2] for h in chat.HARMFUL_EVAL} & {h[:2] for h in chat.HARMFUL}
    for item in items:
        if item["task"] == "identity":
            assert heldout.identity_heldout(item["question"])


def test_moss_data_check_reports_no_errors(corpus, capsys):
    out, _ = corpus
    code = main(["data", "check", *(str(out / n) for n in SFT)])
    report = capsys.readouterr().out
    assert code == 0
    assert ": 0 errors, 0 warnings; " in report.splitlines()[-1]


def test_scale_multiplies_counts(tmp_path):
    small = generate_corpus(tmp_path / "a", seed=3, scale=0.05)
    larger = generate_corpus(tmp_path / "b", seed=3, scale=0.1)
    assert larger["files"]["sft_train.jsonl"]["records"] == pytest.approx(
        2 * small["files"]["sft_train.jsonl"]["records"], rel=0.05)
    assert larger["files"]["pretrain.jsonl"]["records"] > small["files"]["pretrain.jsonl"]["records"]


def test_language_of_and_is_refusal():
    assert language_of("37 乘以 91 等于多少？") == "zh"
    assert language_of("我是 MOSS，一个用 mosslm 构建的 AI 助手。") == "zh"
    assert language_of("37×91=？") == "zh"
    assert language_of("What is 37 times 91?") == "en"
    assert language_of("How do I say 你好 in Chinese?") == "en"
    assert language_of("37 * 91 = ?") == "en"
    assert is_refusal("抱歉，我不能帮助入侵别人的账户。")
    assert is_refusal("Sorry, I can't help with that.")
    assert is_refusal("I'm sorry, but no.")
    assert is_refusal("I can't help with making weapons.")
    assert not is_refusal("Sure! Mix flour, sugar and eggs.")
    assert not is_refusal("好的！先把面粉、糖和鸡蛋混合。")
    assert not is_refusal("37 times 91 is 3367.")


def test_calculate_recipe_teaches_only_calculate(tmp_path):
    manifest = generate_corpus(tmp_path, seed=0, scale=0.05)
    assert manifest["recipe"] == "calculate" and manifest["plugins"] == ["Calculate"]
    assert set(manifest["files"]["sft_train.jsonl"]["categories"]) == set(RECIPES["calculate"].sft_shares)
    meta = protocol.meta_instruction("mosslm", ["Calculate"])
    for conv in train_and_val(tmp_path):
        assert conv.meta == meta
        assert all(c.name == "Calculate" for t in conv.turns for c in t.parsed_commands())
    assert {i["task"] for i in read_jsonl(tmp_path / "eval.jsonl")} == {"arithmetic", "identity", "refusal", "benign"}
    with pytest.raises(ValueError, match="unknown recipe"):
        generate_corpus(tmp_path, recipe="nope")


def _package_imports(package_dir):
    """{module: the package's own modules it imports} from each file's relative imports."""
    import ast

    names = {p.stem for p in package_dir.glob("*.py")}
    graph = {}
    for path in package_dir.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module} if node.module else {a.name for a in node.names}
        graph[path.stem] = deps & names
    return graph


def test_the_synth_modules_import_each_other_without_a_cycle():
    from pathlib import Path

    graph = _package_imports(Path(plugins.__file__).parent)
    assert {"tables", "heldout", "arithmetic", "chat", "plugins", "pretrain", "corpus", "tools"} <= set(graph)
    done: list[str] = []
    while len(done) < len(graph):  # peel off modules whose imports are all done; a cycle leaves none
        ready = sorted(m for m, deps in graph.items() if m not in done and deps <= set(done))
        assert ready, f"import cycle among {sorted(set(graph) - set(done))}"
        done += ready
    assert done.index("arithmetic") < done.index("plugins") < done.index("corpus")


def test_every_table_is_read_and_templates_agree_across_languages():
    """Each resources/synth file is used, and a zh/en template pair asks for the same slots."""
    import string
    from pathlib import Path

    from mosslm.data.synth import tables

    files = {p.stem for p in tables.TABLES.glob("*.json")}
    source = "\n".join(p.read_text(encoding="utf-8") for p in Path(plugins.__file__).parent.glob("*.py"))
    assert files and all(f'table("{name}")' in source for name in files), files

    def slots(template):
        return {field for _, field, _, _ in string.Formatter().parse(template) if field}

    def pairs(node):
        if isinstance(node, dict):
            if set(node) == {"zh", "en"} and all(isinstance(v, str) for v in node.values()):
                yield node
            for value in node.values():
                yield from pairs(value)
        elif isinstance(node, list):
            for value in node:
                yield from pairs(value)

    def aligned(names, letter):  # the everyday sentences name their slots z*/e* by language: zn, en
        return {n[1:] if n[:1] == letter and len(n) > 1 else n for n in names}

    checked = 0
    for name in sorted(files):
        for pair in pairs(tables.table(name)):
            zh, en = slots(pair["zh"]), slots(pair["en"])
            assert zh == en or aligned(zh, "z") == aligned(en, "e"), (name, pair)
            checked += 1
    assert checked > 20


def test_the_quick_eval_scores_search_choice_query_and_fact_apart():
    from mosslm.eval import quick

    _, questions = plugins.handbook()
    q = next(q for q in questions if q["split"] == "heldout" and q["lang"] == "en")
    item = {"task": "search", "lang": "en", "question": q["question"], "topic": q["topic"], "answer": q["answer"]}

    def scored(commands, reply=""):
        return quick.score(item, protocol.Turn(q["question"], reply, plugin=True, commands=commands))

    assert scored(None, q["answer"]) == {"search_chosen": False, "search_well_formed": False, "answer_correct": True}
    assert scored('Search("quantum chromodynamics")') == {"search_chosen": True, "search_well_formed": False,
                                                          "answer_correct": False}
    assert scored(f'Search("{q["query"]}")', f"It was {q['answer']}.") == {
        "search_chosen": True, "search_well_formed": True, "answer_correct": True}
    assert scored('Calculate("1+1")')["search_chosen"] is False


def test_a_general_question_searched_anyway_keeps_its_own_answer_unless_the_handbook_holds_its_terms():
    assert plugins.key_terms("What is the capital of Canada?") == "capital Canada"
    assert plugins.key_terms("长江有多长？", "zh") is None
    turn = plugins.unanswered_search_turn("What is the capital of Canada?", "The capital of Canada is Ottawa.")
    [command] = turn.parsed_commands()
    assert (command.name, command.arg) == ("Search", "capital Canada") and "capital Canada" in turn.thoughts
    assert "Canada" not in turn.results.split("\n", 1)[1] and turn.reply == "The capital of Canada is Ottawa."
    # every term of this one is on the handbook's Pacific page: no such turn
    assert plugins.unanswered_search_turn("What is the largest ocean on Earth?", "The Pacific.") is None


def test_a_searched_general_question_can_say_that_the_results_do_not_answer_before_answering():
    turn = plugins.unanswered_search_turn("What is the capital of Canada?", "The capital of Canada is Ottawa.",
                                          say_so=True)
    assert turn.reply == "The search results do not answer this. From what I know: The capital of Canada is Ottawa."
    assert "<|1|>" not in turn.reply  # nothing of the results is cited
