"""Process groups, launch environments and parallel engines: the only place that imports deepspeed or
wraps modules for parallelism."""
