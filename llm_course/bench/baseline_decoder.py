"""The baseline of ``llm-course bench model``: a plain PyTorch decoder with a static KV cache.

What does "fast" mean for the course's generation? This module is the yardstick: the
smallest decoder written the way `gpt-fast <https://github.com/pytorch-labs/gpt-fast>`_
writes one, in plain PyTorch, on the *same weights* as a course model:

* the KV cache is two buffers per layer, (B, Hkv, S_max, D), allocated once and
  written in place at ``input_pos`` (``index_copy_``): every decode step has the same
  shapes, so the step can be captured in a CUDA graph;
* attention is ``F.scaled_dot_product_attention`` over the *whole* cache with a boolean
  mask row ``causal[input_pos]`` that hides the slots not yet written;
* q, k and v come from one fused projection (``torch.cat`` of the three weights, once);
* nothing else: no backend switch, no input checks, no padding support (every row of
  the batch has the same length, as in the benchmark).

:class:`BaselineDecoder` runs it eagerly or, with ``compile=True``, under
``torch.compile(mode="reduce-overhead")``, which fuses the elementwise work into Triton
kernels, keeps the matmuls on cuBLAS, and replays the decode step as a CUDA graph:
gpt-fast's recipe. Both take the weights of a course model (``GPT2LMHeadModel`` or
``Qwen2ForCausalLM``) without copying them, except the fused q/k/v weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _Layer(nn.Module):
    """One block's weights (shared with the course model) and its two cache buffers."""

    def __init__(self, tensors: dict[str, torch.Tensor | None], cache_shape: tuple[int, ...], dtype, device):
        super().__init__()
        for name, t in tensors.items():
            self.register_buffer(name, t, persistent=False)
        self.register_buffer("k_cache", torch.zeros(cache_shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(cache_shape, dtype=dtype, device=device), persistent=False)


class StaticCacheLM(nn.Module):
    """``forward(idx (B, T) long, input_pos (T,) long) -> logits (B, T, V)``, filling the cache at input_pos.

    Built from a course model (``model.config.family`` "gpt2" or "qwen2"), for
    ``batch_size`` rows and ``max_len`` positions. RoPE's tables are float32, and
    the norms and the rotation compute in float32, as in gpt-fast.
    """

    def __init__(self, model: nn.Module, batch_size: int, max_len: int):
        super().__init__()
        cfg = model.config
        self.family = cfg.family
        if self.family not in ("gpt2", "qwen2"):
            raise ValueError(f"StaticCacheLM: unknown model family {self.family!r} (gpt2 or qwen2)")
        if self.family == "qwen2" and (cfg.rope_scaling is not None or cfg.use_sliding_window):
            raise ValueError("StaticCacheLM: the baseline has plain RoPE and full attention only; this config has "
                             f"rope_scaling={cfg.rope_scaling!r}, use_sliding_window={cfg.use_sliding_window}")  # fmt: skip
        sd = {k: v.detach() for k, v in model.state_dict(keep_vars=True).items()}
        w = next(iter(sd.values()))
        dtype, device = w.dtype, w.device
        self.C = cfg.n_embd
        self.Hq = cfg.n_head
        self.Hkv = getattr(cfg, "num_kv_heads", None) or cfg.n_head
        self.D = cfg.head_dim
        self.eps = cfg.layer_norm_eps if self.family == "gpt2" else cfg.rms_norm_eps
        cache_shape = (batch_size, self.Hkv, max_len, self.D)
        layers = []
        for i in range(cfg.n_layer):
            if self.family == "gpt2":
                p = f"transformer.h.{i}."
                t = {
                    "ln1_w": sd[p + "ln_1.weight"], "ln1_b": sd[p + "ln_1.bias"],
                    "wqkv": sd[p + "attn.c_attn.weight"], "bqkv": sd[p + "attn.c_attn.bias"],
                    "wo": sd[p + "attn.c_proj.weight"], "bo": sd[p + "attn.c_proj.bias"],
                    "ln2_w": sd[p + "ln_2.weight"], "ln2_b": sd[p + "ln_2.bias"],
                    "w_in": sd[p + "mlp.c_fc.weight"], "b_in": sd[p + "mlp.c_fc.bias"],
                    "w_out": sd[p + "mlp.c_proj.weight"], "b_out": sd[p + "mlp.c_proj.bias"],
                }  # fmt: skip
            else:
                p = f"model.layers.{i}."
                a = p + "self_attn."
                bias = [sd.get(a + f"{n}_proj.bias") for n in "qkv"]
                t = {
                    "ln1_w": sd[p + "input_layernorm.weight"],
                    "wqkv": torch.cat([sd[a + f"{n}_proj.weight"] for n in "qkv"]),  # (Hq*D + 2*Hkv*D, C)
                    "bqkv": torch.cat(bias) if bias[0] is not None else None,
                    "wo": sd[a + "o_proj.weight"],
                    "ln2_w": sd[p + "post_attention_layernorm.weight"],
                    "w_gate": sd[p + "mlp.gate_proj.weight"], "w_up": sd[p + "mlp.up_proj.weight"],
                    "w_down": sd[p + "mlp.down_proj.weight"],
                }  # fmt: skip
            layers.append(_Layer(t, cache_shape, dtype, device))
        self.layers = nn.ModuleList(layers)
        if self.family == "gpt2":
            emb, self.head_name = "transformer.wte.weight", "transformer.ln_f"
            self.register_buffer("wpe", sd["transformer.wpe.weight"], persistent=False)
            self.register_buffer("lnf_b", sd["transformer.ln_f.bias"], persistent=False)
        else:
            emb, self.head_name = "model.embed_tokens.weight", "model.norm"
            self.lnf_b = None
            inv_freq = 1.0 / (cfg.rope_base ** (torch.arange(0, self.D, 2, dtype=torch.float32, device=device) / self.D))
            angles = torch.outer(torch.arange(max_len, dtype=torch.float32, device=device), inv_freq)  # (S_max, D/2)
            angles = torch.cat((angles, angles), dim=-1)  # (S_max, D)
            self.register_buffer("cos", angles.cos(), persistent=False)
            self.register_buffer("sin", angles.sin(), persistent=False)
        self.register_buffer("wte", sd[emb], persistent=False)
        self.register_buffer("lnf_w", sd[self.head_name + ".weight"], persistent=False)
        self.register_buffer("lm_head", sd.get("lm_head.weight", sd[emb]), persistent=False)
        causal = torch.ones(max_len, max_len, dtype=torch.bool, device=device).tril()  # (S_max, S_max)
        self.register_buffer("causal", causal, persistent=False)

    def _norm(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if self.family == "gpt2":
            return F.layer_norm(x, (self.C,), w, b, self.eps)
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * w

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * cos + _rotate_half(xf) * sin).type_as(x)

    def forward(self, idx: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        Hq, Hkv, D = self.Hq, self.Hkv, self.D
        x = F.embedding(idx, self.wte)  # (B, T, C)
        if self.family == "gpt2":
            x = x + F.embedding(input_pos, self.wpe)  # + (T, C)
        else:
            cos, sin = self.cos[input_pos], self.sin[input_pos]  # (T, D) each
        mask = self.causal[None, None, input_pos]  # (1, 1, T, S_max): which slots each query sees
        for L in self.layers:
            h = self._norm(x, L.ln1_w, getattr(L, "ln1_b", None))
            q, k, v = F.linear(h, L.wqkv, L.bqkv).split([Hq * D, Hkv * D, Hkv * D], dim=-1)
            q = q.view(B, T, Hq, D).transpose(1, 2)  # (B, Hq, T, D)
            k = k.view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
            v = v.view(B, T, Hkv, D).transpose(1, 2)
            if self.family == "qwen2":
                q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            L.k_cache.index_copy_(2, input_pos, k)  # write the new keys in place: (B, Hkv, S_max, D)
            L.v_cache.index_copy_(2, input_pos, v)
            y = F.scaled_dot_product_attention(q, L.k_cache, L.v_cache, attn_mask=mask, enable_gqa=Hq != Hkv)
            x = x + F.linear(y.transpose(1, 2).reshape(B, T, Hq * D), L.wo, getattr(L, "bo", None))
            h = self._norm(x, L.ln2_w, getattr(L, "ln2_b", None))
            if self.family == "gpt2":
                m = F.linear(F.gelu(F.linear(h, L.w_in, L.b_in), approximate="tanh"), L.w_out, L.b_out)
            else:
                m = F.linear(F.silu(F.linear(h, L.w_gate)) * F.linear(h, L.w_up), L.w_down)
            x = x + m
        x = self._norm(x, self.lnf_w, self.lnf_b)
        return F.linear(x, self.lm_head)  # (B, T, V)


class BaselineDecoder:
    """Greedy-decoding driver of :class:`StaticCacheLM`: ``prefill(ids) -> (B, V)``, ``step(tok) -> (B, V)``.

    ``mode``: ``"eager"`` runs the step as plain PyTorch; ``"graph"`` captures it in a CUDA
    graph by hand (static token buffer, warm-up on a side stream) and replays it;
    ``"compile"`` wraps it in ``torch.compile(mode="reduce-overhead", fullgraph=True)``
    (compiled on the first step, replayed as a CUDA graph after). The prefill is always
    eager. The position ``input_pos`` lives on the device and is advanced in place, so no
    step waits for the host. In graph and compile modes the returned logits are a static
    buffer that the next step overwrites.
    """

    MODES = ("eager", "graph", "compile")

    def __init__(self, model: nn.Module, batch_size: int, max_len: int, *, mode: str = "eager"):
        if mode not in self.MODES:
            raise ValueError(f"BaselineDecoder: mode must be one of {', '.join(self.MODES)}, got {mode!r}")
        self.lm = StaticCacheLM(model, batch_size, max_len)
        device = self.lm.wte.device
        if mode != "eager" and device.type != "cuda":
            raise RuntimeError(f"BaselineDecoder(mode={mode!r}) needs a CUDA GPU; the model is on {device}")
        self.max_len, self.mode = max_len, mode
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # (1,): the next position
        self.tok = torch.zeros(batch_size, 1, dtype=torch.long, device=device)  # (B, 1): static input
        self._decode = torch.compile(self._one, mode="reduce-overhead", fullgraph=True) if mode == "compile" else self._one
        self._graph, self._out = None, None

    def _one(self, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.lm(tok, pos)[:, -1]  # (B, V)

    def _one_and_advance(self) -> torch.Tensor:
        logits = self._one(self.tok, self.pos)
        self.pos += 1  # on the device: part of the captured step
        return logits

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        if T >= self.max_len:
            raise ValueError(f"BaselineDecoder: a prompt of {T} tokens leaves no room in a cache of {self.max_len}")
        pos = torch.arange(T, device=input_ids.device)
        logits = self.lm(input_ids, pos)[:, -1]  # (B, V)
        self.pos.fill_(T)
        return logits

    @torch.no_grad()
    def step(self, tok: torch.Tensor) -> torch.Tensor:
        """tok (B, 1) long: the last tokens -> logits (B, V) of the next ones."""
        if self.mode == "graph":
            self.tok.copy_(tok)
            if self._graph is None:
                self._capture()
            self._graph.replay()
            return self._out
        if self.mode == "compile":
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs may be overwritten now
        logits = self._decode(tok, self.pos)
        self.pos += 1
        return logits

    def _capture(self) -> None:
        """Warm up on a side stream (each run from the same position), then record one step."""
        saved = self.pos.clone()
        main = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            for _ in range(2):
                self._one_and_advance()
                self.pos.copy_(saved)
        main.wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._out = self._one_and_advance()  # recorded, not run: pos is unchanged
