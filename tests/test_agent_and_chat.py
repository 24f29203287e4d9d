"""The chat/agent loop: plugin two-pass flow, history, context trimming, the CLI."""

import os
import subprocess
import sys

import pytest
from conftest import memorize

from mosslm import protocol
from mosslm.agent import Agent, ModelGenerator
from mosslm.engine import Generation, SamplingParams
from mosslm.engine.generate import ContextTooLong
from mosslm.model import load, save_checkpoint
from mosslm.plugins.registry import BUILTINS, Plugin, run_commands

QUESTION = "1234*5678等于多少?"
GREEDY = SamplingParams(max_new_tokens=64, temperature=0.0)


def moss(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "mosslm", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def calculator_model(tiny_tokenizer, tmp_path_factory):
    """A micro model trained here, in seconds, to answer QUESTION through Calculate.

    It is a real checkpoint going through the real CLI, engine and plugin;
    the calculator's result only reaches the model in the second pass.
    """
    meta = protocol.meta_instruction("mosslm", ["Calculate"])
    turn = protocol.Turn(QUESTION, "1234*5678=7006652。", plugin=True, thoughts="需要计算",
                         commands='Calculate("1234*5678")', results="Calculate(\"1234*5678\") => '7006652'\n")
    model = memorize(tiny_tokenizer, [protocol.Conversation(meta, [turn]).render()], steps=300)
    path = tmp_path_factory.mktemp("calc") / "calc-model"
    save_checkpoint(model, tiny_tokenizer, path, preset="mosslm", metadata={"plugins": ["Calculate"]})
    return path


def test_two_pass_calculate_flow_through_the_cli(calculator_model, tmp_path):
    result = moss("chat", "--model", str(calculator_model), "--message", QUESTION,
                  "--temperature", "0", "--max-new-tokens", "48", "--show-protocol", env={"MOSSLM_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # First pass ended at <eoc> with the command; the real calculator's block was appended.
    assert '<|Commands|>: Calculate("1234*5678")<eoc>\n' in out
    assert "<|Results|>:\nCalculate(\"1234*5678\") => '7006652'\n<eor>\n" in out
    assert "<|MOSS|>: 1234*5678=7006652。<eom>" in out


def test_second_pass_sees_the_tool_result(calculator_model):
    loaded = load(calculator_model)
    prompts = []

    class Recording(ModelGenerator):
        def stream(self, prompt, params, result):
            prompts.append(prompt)
            return super().stream(prompt, params, result)

    agent = Agent(Recording(loaded), preset="mosslm", params=GREEDY)
    agent.set_plugins(["Calculate"])
    events = list(agent.send(QUESTION))
    assert len(prompts) == 2
    assert prompts[0].endswith(f"<|Human|>: {QUESTION}<eoh>\n<|Inner Thoughts|>:")
    assert prompts[1].endswith("<|Results|>:\nCalculate(\"1234*5678\") => '7006652'\n<eor>\n<|MOSS|>:")
    assert [e.text for e in events if e.kind == "commands"] == ['Calculate("1234*5678")']
    assert "7006652" in "".join(e.text for e in events if e.kind == "text")
    # A second turn compresses the first turn's results to None in the prompt.
    list(agent.send(QUESTION))
    assert prompts[2].count("<|Results|>: None<eor>\n") == 1


class Scripted:
    """Stands in for a model where a test needs a chosen output (tool errors, drops)."""

    context_length = 4096

    def __init__(self, outputs):
        self.outputs = list(outputs)
        self.prompts = []

    def count_tokens(self, text):
        return len(text)

    def stream(self, prompt, params, result: Generation):
        self.prompts.append(prompt)
        text = self.outputs.pop(0)
        result.text = text
        yield text


def test_unknown_disabled_and_failing_tools_never_crash_the_turn():
    def boom(arg):
        raise RuntimeError("tool crashed")

    slow = Plugin("Slow", lambda a: __import__("time").sleep(2) or "late", timeout=0.2,
                  block=lambda c, v: f"{c} => '{v or 'No result.'}'\n")
    broken = Plugin("Calculate", boom, block=protocol.calculate_block)
    cmds = protocol.parse_commands('Calculate("1+1"), Search("x"), Slow("y"), Teleport("z")')
    results = run_commands(cmds, {"Calculate": broken, "Slow": slow})
    assert results == "Calculate(\"1+1\") => 'No result.'\nSlow(\"y\") => 'No result.'\n"
    # Safe evaluator refusals come back in the protocol's failure form.
    for attack in ["__import__('os')", "().__class__", "open('x')", "9**9**9"]:
        block = run_commands([protocol.Command("Calculate", attack)], BUILTINS)
        assert block.endswith("=> 'No result.'\n")


def test_agent_with_scripted_model_runs_only_enabled_plugins():
    gen = Scripted([' 算<eot>\n<|Commands|>: Calculate("2^10"), Search("x")', " 1024"])
    agent = Agent(gen, preset="moss", params=GREEDY)
    agent.set_plugins(["Calculate"])
    list(agent.send("2的10次方?"))
    turn = agent.history.turns[-1]
    assert turn.results == "Calculate(\"2^10\") => '1024'\n" and turn.reply == "1024"
    assert gen.prompts[1].endswith("<|Results|>:\nCalculate(\"2^10\") => '1024'\n<eor>\n<|MOSS|>:")


def test_history_is_kept_and_trimmed_at_turn_boundaries(tiny_checkpoint):
    loaded = load(tiny_checkpoint)
    generator = ModelGenerator(loaded)
    generator.context_length = 200
    agent = Agent(generator, preset="mosslm", params=SamplingParams(max_new_tokens=8, temperature=0.0),
                  system="You are MOSS.\n")
    for i in range(12):
        list(agent.send(f"第{i}个问题：hello world {i}"))
    assert len(agent.history.turns) == 12  # the history keeps everything
    conv = protocol.Conversation(agent.history.meta, agent.history.turns + [protocol.Turn("next")])
    fitted = agent.fit_context(conv)
    assert 1 <= len(fitted.turns) < 13
    assert fitted.turns[-1].human == "next"
    assert [t.human for t in fitted.turns[:-1]] == [t.human for t in agent.history.turns[-(len(fitted.turns) - 1):]]
    prompt = protocol.generation_prompt(fitted)
    assert prompt.startswith(agent.history.meta) and generator.count_tokens(prompt) <= 200 - 8
    with pytest.raises(ContextTooLong, match="too long"):
        list(agent.send("很长的消息 " * 300))
    assert len(agent.history.turns) == 12  # a refused message leaves the history as it was


def test_repl_commands(tiny_checkpoint):
    import io

    from mosslm.chat import repl

    agent = Agent(ModelGenerator(load(tiny_checkpoint)), preset="mosslm",
                  params=SamplingParams(max_new_tokens=4, temperature=0.0))
    out = io.StringIO()
    script = "hi\n/plugins on calculate\n/plugins\n/system You are a test.\n/system\n/clear\n/nope\n/exit\nnever\n"
    repl(agent, inp=io.StringIO(script), out=out)
    text = out.getvalue()
    assert "Calculate    enabled" in text
    assert "You are a test." in text and "conversation cleared" in text and "unknown command /nope" in text
    assert agent.history.turns == [] and agent.plugins and agent.system == "You are a test.\n"


def test_chat_without_default_model_says_how_to_get_one(tmp_path):
    result = moss("chat", "--message", "hi", env={"MOSSLM_HOME": str(tmp_path)})
    assert result.returncode == 2
    assert "no default model" in result.stderr and "moss download smollm2" in result.stderr


def test_chat_rejects_bad_parameters(tiny_checkpoint):
    result = moss("chat", "--model", str(tiny_checkpoint), "--message", "hi", "--top-p", "0")
    assert result.returncode == 2 and "top_p" in result.stderr
    result = moss("chat", "--model", str(tiny_checkpoint), "--message", "hi", "--plugins", "teleport")
    assert result.returncode == 2 and "unknown plugin" in result.stderr
