"""The simulator's requests: the core Request with token ids that cost nothing to build.

Token values never matter to a cost model, so prompts are ``range(n)`` objects (length
and slicing in O(1)) and every sampled token is the constant ``SIM_TOKEN_ID``; requests
use ignore_eos and their workload's output length, exactly as ``podserve bench`` runs them.
"""
from __future__ import annotations

from podserve.request import Request, SamplingParams

SIM_TOKEN_ID = 0


class SimRequest(Request):
    """A Request whose ``token_ids_from`` returns a range instead of copying lists.

    ``Request.token_ids_from`` concatenates prompt and output for every decode, O(context)
    per token: the simulator's dominant cost on long prompts. Only the count matters here.
    """

    def token_ids_from(self, start: int, count: int):
        return range(start, start + count)


def make_request(index: int, arrival: float, num_prompt_tokens: int, num_output_tokens: int, prefix: str = "sim") -> SimRequest:
    """A request of the given lengths arriving at ``arrival`` (seconds, virtual clock)."""
    params = SamplingParams(max_tokens=num_output_tokens, temperature=0.0, ignore_eos=True)
    return SimRequest(request_id=f"{prefix}-{index}", prompt_token_ids=range(num_prompt_tokens),
                      sampling_params=params, arrival_time=arrival)
