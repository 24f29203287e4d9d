"""Tool data for a company's own plugin: real tool results, negatives, clear errors, and it trains."""

import json
from pathlib import Path

import pytest

from mosslm import protocol
from mosslm.data.conversations import check_files
from mosslm.data.synth.tools import ToolDataError, load_tools, run_tool, tool_conversations
from mosslm.plugins.registry import run_commands

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "examples" / "tools" / "order_status.py"
QUESTIONS = REPO / "examples" / "tools" / "questions.jsonl"


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("tools") / "tool.jsonl"
    summary = tool_conversations(PLUGIN, QUESTIONS, out, seed=1, builtins=["Calculate"])
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return summary, out, records


def test_output_passes_check_and_meta_lists_the_tool(generated):
    summary, out, records = generated
    (report,) = check_files([str(out)])
    assert report.errors == 0 and report.conversations == len(records) == summary["conversations"]
    for record in records:
        assert "- Order status: enabled. API: OrderStatus(order_id)\n" in record["meta_instruction"]
        assert "- Calculator: enabled. API: Calculate(expression)\n" in record["meta_instruction"]
    assert summary["plugins"] == ["Calculate", "OrderStatus"]


def test_commands_call_the_tool_and_results_are_its_real_output(generated):
    _, out, _ = generated
    (plugin,) = load_tools(PLUGIN)
    tool_turns = [t for _, c in _convs(out) for t in c.turns if "OrderStatus" in (t.commands or "")]
    assert len(tool_turns) > 40
    failed = 0
    for turn in tool_turns:
        (command,) = turn.parsed_commands()
        assert command.name == "OrderStatus"
        explicit = "A-one-zero-zero-two" in turn.human or "幺零零五" in turn.human  # records that give "argument"
        assert explicit or command.arg.upper() in turn.human.upper()
        assert turn.results == run_commands([command], {"OrderStatus": plugin})
        value = plugin.run(command.arg)
        if value is None:
            failed += 1
            assert turn.results.endswith("=> No result.\n")
            assert "could not get a result" in turn.reply or "没有得到结果" in turn.reply
        else:
            assert value in turn.reply
    assert failed >= 1


def test_negatives_have_no_tool_command(generated):
    _, out, records = generated
    convs = dict(_convs(out))
    negatives = [r for r in records if r["category"] == "negative"]
    assert len(negatives) >= 30
    for r in negatives:
        for turn in convs[r["conversation_id"]].turns:
            assert all(c.name != "OrderStatus" for c in turn.parsed_commands())
    direct = [t for r in negatives for t in convs[r["conversation_id"]].turns if t.human == "退货政策是什么？"]
    assert direct and all(t.commands is None and t.results is None for t in direct)


def test_eval_items_are_held_out(generated):
    summary, out, records = generated
    items = [json.loads(line) for line in Path(summary["eval"]).read_text(encoding="utf-8").splitlines()]
    humans = {t.human for _, c in _convs(out) for t in c.turns}
    tool_items = [i for i in items if i["task"] == "tool"]
    assert tool_items and any(i["task"] == "no_tool" for i in items)
    for item in tool_items:
        assert item["question"] not in humans
        assert not any(h.endswith(item["question"]) for h in humans)


def test_a_failing_tool_gives_no_result(tmp_path):
    plugin_file = tmp_path / "broken.py"
    plugin_file.write_text("from mosslm.plugins.registry import Plugin\n"
                           "def boom(x):\n    raise RuntimeError('backend down')\n"
                           "PLUGIN = Plugin('Inventory', boom, label='Inventory', arg_name='sku')\n")
    questions = tmp_path / "q.txt"
    questions.write_text("# comments are skipped\nHow many SKU-1 are left?\n")
    (plugin,) = load_tools(plugin_file)
    assert run_tool(plugin, "SKU-1") == (None, 'Inventory("SKU-1") => No result.\n')
    with pytest.raises(ToolDataError, match=r"q.txt:2: no argument"):
        tool_conversations(plugin_file, questions, tmp_path / "o.jsonl")
    plugin_file.write_text(plugin_file.read_text() + "ARGUMENT_PATTERN = r'SKU-\\d+'\n")
    summary = tool_conversations(plugin_file, questions, tmp_path / "o.jsonl", eval_fraction=0, negative_share=0)
    convs = [c for _, c in _convs(tmp_path / "o.jsonl")]
    assert summary["categories"] == {"tool_failed": len(convs)}
    turn = convs[0].turns[-1]
    assert turn.commands == 'Inventory("SKU-1")' and turn.results == 'Inventory("SKU-1") => No result.\n'


def test_bad_inputs_name_the_file_and_line(tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "Where is A1002?"}\n')
    with pytest.raises(ToolDataError, match="plugin file not found: .*nope.py"):
        tool_conversations(tmp_path / "nope.py", questions, tmp_path / "o.jsonl")
    empty_plugin = tmp_path / "none.py"
    empty_plugin.write_text("X = 1\n")
    with pytest.raises(ToolDataError, match=r"none.py: define PLUGIN"):
        tool_conversations(empty_plugin, questions, tmp_path / "o.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ToolDataError, match=r"empty.jsonl: no questions"):
        tool_conversations(PLUGIN, empty, tmp_path / "o.jsonl")
    questions.write_text('{"question": "Where is A1002?"}\n{"question": "oops"\n')
    with pytest.raises(ToolDataError, match=r"q.jsonl:2: not valid JSON"):
        tool_conversations(PLUGIN, questions, tmp_path / "o.jsonl")
    questions.write_text('{"question": "Is it raining?", "negative": true}\n')
    with pytest.raises(ToolDataError, match=r"q.jsonl:1: a negative question needs the direct 'answer'"):
        tool_conversations(PLUGIN, questions, tmp_path / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists()


def test_a_tiny_model_trains_on_the_data(generated, tmp_path):
    from mosslm.tokenizer import train_from_files
    from mosslm.train.config import load_config
    from mosslm.train.loop import read_metrics, train

    _, out, _ = generated
    train_from_files([str(out)], 600, str(tmp_path / "tok"), show_progress=False)
    cfg = load_config(None, [f"tokenizer={tmp_path / 'tok'}", f"train={out}", "preset=micro", "seq_len=256",
                             "batch_size=8", "micro_batch_size=8", "max_steps=16", "save_every=100",
                             "eval_every=100", "log_every=1", "dtype=fp32", "progress=false", "lr=0.003",
                             "warmup_steps=2", "plugins=Calculate,OrderStatus", f"out={tmp_path / 'run'}"],
                      stage="sft")
    train(cfg)
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 * 0.85, losses


def _convs(path):
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        yield record["conversation_id"], protocol.from_moss_json(record)
