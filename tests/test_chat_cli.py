"""``llm-course chat``: a conversation piped through stdin, replies as a by-hand greedy loop gives them."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys

import pytest
import torch

from llm_course.generation.chat import apply_chat_template, course_tokenizer_dir
from llm_course.generation.chat_cli import ChatSession, chat_turn, fit_messages, main
from llm_course.generation.loading import load_for_generation
from llm_course.models.config import load_model_config
from llm_course.models.hf_weights import build_model, save_pretrained

MAX_NEW = 6


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random qwen2-tiny (large weights: replies differ from prompt to prompt) saved with the course tokenizer."""
    folder = tmp_path_factory.mktemp("chat_model")
    cfg = load_model_config("qwen2-tiny")
    cfg.initializer_range = 0.3
    torch.manual_seed(0)
    save_pretrained(build_model(cfg), folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(course_tokenizer_dir() / name, folder / name)
    return folder


@torch.no_grad()
def greedy_reply(model, tok, messages: list[dict], n: int = MAX_NEW) -> str:
    """The reference: render the conversation, then full forwards, argmax, until <|im_end|> or n tokens."""
    ids = tok.encode(apply_chat_template(messages, add_generation_prompt=True))
    stops = {tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")}
    seq, new = torch.tensor([ids]), []
    for _ in range(n):
        t = model(seq)[0, -1].argmax().item()
        if t in stops:
            break
        new.append(t)
        seq = torch.cat([seq, torch.tensor([[t]])], dim=1)
    return tok.decode(new)


def test_piped_conversation_keeps_history_and_obeys_commands(model_dir, monkeypatch, capsys):
    lines = ["Sort the list: 3 1 2", "/system Answer briefly.", "", "Reverse the list: 1 2", "/reset", "/bogus",
             "How many items: 5 5", "/exit", "Largest of: 1 2"]  # fmt: skip
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    rc = main(["--model", str(model_dir), "--greedy", "--max-new-tokens", str(MAX_NEW), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert "unknown command /bogus" in err and "conversation forgotten" in err and "Answer briefly." in err

    loaded = load_for_generation(str(model_dir), device="cpu", dtype=torch.float32)
    model, tok = loaded.model, loaded.tokenizer
    conv = [{"role": "user", "content": "Sort the list: 3 1 2"}]
    first = greedy_reply(model, tok, conv)
    conv = [{"role": "system", "content": "Answer briefly."}, *conv, {"role": "assistant", "content": first},
            {"role": "user", "content": "Reverse the list: 1 2"}]  # fmt: skip
    second = greedy_reply(model, tok, conv)  # the whole history, under the new system message
    third = greedy_reply(model, tok, [{"role": "system", "content": "Answer briefly."},
                                      {"role": "user", "content": "How many items: 5 5"}])  # fmt: skip
    assert out == f"{first}\n{second}\n{third}\n"  # streamed, a newline after each reply; nothing after /exit


def test_chat_turn_streams_what_it_returns_and_sessions_remember(model_dir):
    loaded = load_for_generation(str(model_dir), device="cpu", dtype=torch.float32)
    model, tok = loaded.model, loaded.tokenizer
    messages = [{"role": "user", "content": "Smallest of: 4 2"}]
    pieces: list[str] = []
    reply = chat_turn(model, tok, messages, greedy=True, max_new_tokens=MAX_NEW, print_fn=pieces.append)
    assert "".join(pieces) == reply == greedy_reply(model, tok, messages)
    assert messages == [{"role": "user", "content": "Smallest of: 4 2"}]  # not changed
    # sampling with a seed is reproducible
    kwargs = dict(max_new_tokens=MAX_NEW, temperature=1.0, top_k=50, seed=3, stream=False)
    assert chat_turn(model, tok, messages, **kwargs) == chat_turn(model, tok, messages, **kwargs)
    session = ChatSession(model, tok, system="Be brief.", greedy=True, max_new_tokens=MAX_NEW, stream=False)
    session.send("hi")
    session.send("again")
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant", "user", "assistant"]
    session.reset()
    assert session.messages == [{"role": "system", "content": "Be brief."}]


def test_a_long_conversation_drops_its_oldest_messages(model_dir):
    loaded = load_for_generation(str(model_dir), device="cpu", dtype=torch.float32)
    tok = loaded.tokenizer
    messages = [{"role": "system", "content": "sys"}]
    for k in range(12):
        messages.append({"role": "user" if k % 2 == 0 else "assistant", "content": f"message {k}: " + "1 2 3 4 5 " * 2})
    room = 100
    kept, ids = fit_messages(tok, messages, room)
    assert kept[0]["role"] == "system" and kept[1:] == messages[len(messages) - len(kept) + 1 :]  # the latest ones
    assert len(ids) <= room < len(tok.encode(tok.apply_chat_template([kept[0]] + messages[-len(kept) :])))
    with pytest.raises(ValueError, match="last message alone"):
        fit_messages(tok, [{"role": "user", "content": "7 " * 200}], room)
    # chat_turn leaves room for the reply inside the model's context (block_size 128)
    reply = chat_turn(loaded.model, tok, messages, greedy=True, max_new_tokens=MAX_NEW, stream=False)
    assert isinstance(reply, str)


def test_errors_exit_with_status_2(model_dir, tmp_path, monkeypatch, capsys):
    assert main(["--model", str(tmp_path / "nothing")]) == 2
    no_template = tmp_path / "plain"
    shutil.copytree(model_dir, no_template)
    config = (no_template / "tokenizer_config.json").read_text()
    import json

    cfg = json.loads(config)
    cfg.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert main(["--model", str(no_template)]) == 2
    assert "no chat template" in capsys.readouterr().err


def test_a_real_pipe(model_dir):
    """The module run as a program, its stdin a pipe: what `printf ... | llm-course chat` does."""
    cmd = [sys.executable, "-m", "llm_course.generation.chat_cli", "--model", str(model_dir), "--greedy",
           "--max-new-tokens", "3", "--device", "cpu"]  # fmt: skip
    done = subprocess.run(cmd, input="Sort the list: 2 1\n/exit\n", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("\n") and done.stdout.count("\n") >= 1 and "chatting with" in done.stderr
