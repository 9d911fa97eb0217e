"""Sequence-parallel sampling on a warm torch.distributed worker group (several GPUs, one sampler node).

``layout``: how tokens (and, with ``cfg_degree``, guidance rows) are cut across ranks; ``settings``: the
socket value naming the group and its degrees; ``attention``: yunchang's Ulysses/ring attention with
exact handling of padding rows and the process groups; ``sharded_model``: the MMDiT over the local
tokens; ``protocol``: jobs and store keys; ``serve`` / ``worker.py``: the torchrun worker; ``group``:
the client of one running group; ``warm_groups``: the groups kept warm between runs; ``joined``: the
group of torchrun ranks a ``generate --sp-size`` process runs each generation with, consulted by the
sampler and VAE Decode nodes; ``shared_decode``: decoder passes spread over such a group. Callers pass
their progress and cancel hooks in; nothing here imports the node layer or the host. Needs the
optional ``yunchang`` package only when a group runs.
"""
