"""Sequence-parallel sampling on a warm torch.distributed worker group (several GPUs, one sampler node).

``layout``: how tokens (and, with ``cfg_degree``, guidance rows) are cut across ranks; ``attention``:
yunchang's Ulysses/ring attention with exact handling of padding rows and the process groups;
``sharded_model``: the MMDiT over the local tokens; ``protocol``:
requests and store keys; ``serve`` / ``worker.py``: the torchrun worker; ``group``: the sampler's
client of a warm group. Needs the optional ``yunchang`` package only when a group runs.
"""
