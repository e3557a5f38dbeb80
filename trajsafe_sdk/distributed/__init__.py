"""Scale-out on Ray (needs the `ray` extra: ``pip install 'trajsafe-sdk[ray]'``).

- `trajsafe_sdk.distributed.ray_batch`: batch scoring of JSONL files or folders of shards on Ray Data
  (`score_ray`, and `trajsafe score --engine ray`).
- `trajsafe_sdk.distributed.ray_serve`: the monitor as a Ray Serve application
  (``serve run trajsafe_sdk.distributed.ray_serve:app_builder``).

Nothing outside this package imports ray; importing this package itself does not either.
"""
