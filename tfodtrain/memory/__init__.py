"""Framework-free memory tools: they import neither TensorFlow nor Hydra (standard library only).

Leak guard modules (the training callback and the replay tool share them):

- ``traces``: the trace CSV ``step,time_s,used_bytes,limit_bytes``: ``TraceWriter``, ``read_trace``.
- ``detector``: ``TrendDetector``, one per memory pool; an ``Assessment`` per reading.
- ``policy``: ``GuardSettings`` and ``GuardPolicy``: an assessment becomes a ``Decision`` (ok, warn, abort).
- ``guard``: ``MemoryGuard``: a detector and a policy per pool; ``observe`` / ``observe_many``.
- ``replay``: ``python -m tfodtrain.memory.replay TRACE.csv ...``: what the guard would have done.
- ``tracegen``: ``python -m tfodtrain.memory.tracegen OUT_DIR``: generated traces with labels.
"""
