"""An all-to-all backend in the shape of vLLM's modular MoE kernels: the prepare/finalize half
(``FusedMoEPrepareAndFinalize`` in vllm/model_executor/layers/fused_moe/modular_kernel.py,
vLLM 0.11). prepare = quantize if asked + dispatch, returning the expert-major tokens and the
per-expert counts; finalize = combine, which applies the router weights and reduces over top-k.

It works on torch tensors (CUDA backend for CUDA tensors) and on numpy arrays (host backend), and
does not import vLLM: it implements the methods vLLM calls (docs/python.md, "vLLM adapter").
The experts half must read the expert-major layout: local expert j's tokens are rows
[o_j, o_j + n_j) of the prepared activations, o_j = sum_{i<j} roundup(n_i, expert_alignment),
n = ExpertTokensMetadata.expert_num_tokens (a contiguous grouped GEMM, for example).
"""

import dataclasses

from . import _arrays as arr


@dataclasses.dataclass
class ExpertTokensMetadata:
    """vLLM's ExpertTokensMetadata fields: tokens per local expert, on the device (and on the
    host when already there)."""

    expert_num_tokens: object
    expert_num_tokens_cpu: object = None


def _wants_fp8(quant_config):
    """Whether vLLM's FusedMoEQuantConfig (or "fp8"/None) asks for fp8 e4m3 activations, and
    the block of values per scale it asks for (None: any)."""
    if quant_config is None:
        return False, None
    if isinstance(quant_config, str):
        if quant_config in ("fp8", "float8_e4m3fn"):
            return True, None
        raise NotImplementedError("moefabric dispatches bf16 or fp8 e4m3, not %r" % quant_config)
    dt = getattr(quant_config, "quant_dtype", None)
    if dt is None:
        return False, None
    if "float8_e4m3" not in str(dt) and str(dt) != "fp8":
        raise NotImplementedError("moefabric dispatches bf16 or fp8 e4m3 activations, not %s" % dt)
    if getattr(quant_config, "per_act_token_quant", False):
        raise NotImplementedError("per-token fp8 scales: moefabric carries one scale per block of values")
    block = getattr(quant_config, "block_shape", None)
    return True, (int(block[1]) if block else None)


class MoefabricPrepareAndFinalize:
    """prepare/finalize over a moefabric Communicator (one dispatch->combine in flight)."""

    def __init__(self, comm):
        self.comm = comm

    # ---- what vLLM asks of a prepare/finalize ------------------------------------------------
    @property
    def activation_format(self):
        try:
            from vllm.model_executor.layers.fused_moe.modular_kernel import FusedMoEActivationFormat

            return FusedMoEActivationFormat.Standard
        except ImportError:
            return "standard"

    def topk_indices_dtype(self):
        try:
            import torch

            return torch.int32
        except ImportError:
            return "int32"

    def max_num_tokens_per_rank(self):
        return self.comm.config.max_tokens_per_rank

    def num_dispatchers(self):
        return self.comm.nranks

    def output_is_reduced(self):
        return False  # each rank gets its own tokens back

    def supports_async(self):
        return False

    # ---- prepare -----------------------------------------------------------------------------
    def _check_expert_map(self, num_experts, expert_map):
        cfg = self.comm.config
        if num_experts != cfg.num_experts:
            raise ValueError("num_experts %d, the communicator has %d" % (num_experts, cfg.num_experts))
        if expert_map is None:
            return
        got = arr.to_host_list(expert_map)
        first, n = self.comm.first_expert, self.comm.num_local_experts
        want = [e - first if first <= e < first + n else -1 for e in range(num_experts)]
        if got != want:
            raise ValueError(
                "expert_map does not match moefabric's placement: rank r of R owns experts "
                "[floor(r*E/R), floor((r+1)*E/R)), here [%d, %d)" % (first, first + n)
            )

    def _activations(self, a1, fp8):
        """a1 as the communicator dispatches it: (x, scales or None)."""
        block = self.comm.scale_block
        if arr.is_torch(a1):
            import torch

            x = a1.to(torch.bfloat16) if a1.dtype != torch.bfloat16 else a1
            if not fp8:
                return x.contiguous(), None
            T, H = x.shape
            xb = x.float().reshape(T, H // block, block)
            amax = xb.abs().amax(dim=2)
            scales = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax))
            q = (xb / scales[:, :, None]).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
            return q.reshape(T, H).contiguous(), scales.contiguous()
        from . import numerics as num

        x32 = num.f32_from_bf16(a1) if str(a1.dtype) == "uint16" else a1.astype("float32")
        if fp8:
            return num.quantize_fp8(num.f32_from_bf16(num.bf16_from_f32(x32)), block)
        return num.bf16_from_f32(x32), None

    def prepare(
        self,
        a1,
        topk_weights,
        topk_ids,
        num_experts,
        expert_map,
        apply_router_weight_on_input,
        quant_config,
        defer_input_quant=False,
    ):
        """Quantize (fp8 when the communicator dispatches fp8, as quant_config must then ask)
        and dispatch. Returns (expert_x, expert_x_scale or None, ExpertTokensMetadata, None,
        None): expert_x is the communicator's receive buffer [capacity, hidden], expert-major."""
        self._check_expert_map(num_experts, expert_map)
        comm_fp8 = self.comm.config.dispatch_dtype == "fp8"
        asked, block = _wants_fp8(quant_config)
        if asked and not comm_fp8:
            raise ValueError("quant_config asks for fp8 activations; build the communicator with dispatch_dtype='fp8'")
        if comm_fp8 and (defer_input_quant or not asked):
            raise ValueError("this communicator dispatches fp8: pass a quant_config asking for fp8 activations")
        if block is not None and block != self.comm.scale_block:
            raise ValueError("quant_config's block %d, the communicator's scale_block %d" % (block, self.comm.scale_block))
        weights = topk_weights
        if apply_router_weight_on_input:
            if topk_ids.shape[1] != 1:
                raise ValueError("apply_router_weight_on_input needs top-1 routing")
            if arr.is_torch(a1):
                import torch

                a1 = (a1.float() * topk_weights.float()).to(torch.bfloat16)
                weights = topk_weights.new_ones(topk_weights.shape, dtype=topk_weights.dtype)
            else:
                from . import numerics as num

                x32 = num.f32_from_bf16(a1) if str(a1.dtype) == "uint16" else a1.astype("float32")
                a1 = x32 * topk_weights.astype("float32")
                weights = topk_weights * 0 + 1
        if arr.is_torch(weights):
            import torch

            weights = weights.to(torch.float32).contiguous()
        else:
            weights = weights.astype("float32")
        x, scales = self._activations(a1, comm_fp8)
        res = self.comm.dispatch(x, topk_ids, weights, x_scales=scales)
        counts_cpu = res.counts if not arr.on_gpu(res.counts) else None
        return res.x, res.scales, ExpertTokensMetadata(res.counts, counts_cpu), None, None

    # ---- finalize ----------------------------------------------------------------------------
    def finalize(
        self,
        output,
        fused_expert_output,
        topk_weights,
        topk_ids,
        apply_router_weight_on_input,
        weight_and_reduce_impl=None,
    ):
        """Combine into `output` [T, hidden]: the router weights (those given to prepare) are
        applied and the top-k reduced by the combine itself, so weight_and_reduce_impl is not
        used. fused_expert_output has the prepared layout [capacity, hidden]."""
        y_in = fused_expert_output
        if arr.is_torch(y_in):
            import torch

            if y_in.dtype != torch.bfloat16:
                y_in = y_in.to(torch.bfloat16)
            direct = output.dtype == torch.bfloat16 and output.is_contiguous()
            y = self.comm.combine(y_in.contiguous(), out=output if direct else None)
            if not direct:
                output.copy_(y)
            return None
        from . import numerics as num

        if str(y_in.dtype) != "uint16":
            y_in = num.bf16_from_f32(y_in)
        y = self.comm.combine(y_in)
        output[...] = y if str(output.dtype) == "uint16" else num.f32_from_bf16(y)
        return None
