"""Console progress line (step, metrics, images/s, ETA) and TensorBoard event files."""
import time

import jax


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    """Images/s and ETA over the steps since the previous report (the first report includes compile)."""

    def __init__(self, start_step: int, total_steps: int, global_batch_size: int):
        self.total_steps = total_steps
        self.global_batch_size = global_batch_size
        self.last_step = start_step
        self.last_time = time.perf_counter()
        self.started = self.last_time

    def line(self, step: int, metrics: dict, keys=("loss",)) -> str:
        """A one-line report at `step` (steps completed), e.g. 'step 200/2000 | loss 0.0310 | ...'."""
        now = time.perf_counter()
        steps = max(step - self.last_step, 1)
        sec_per_step = (now - self.last_time) / steps
        self.last_step, self.last_time = step, now
        values = " | ".join(f"{k} {float(metrics[k]):.4g}" for k in keys if k in metrics)
        eta = format_duration(sec_per_step * (self.total_steps - step))
        return (f"step {step}/{self.total_steps} | {values} | "
                f"{self.global_batch_size / sec_per_step:.0f} img/s | "
                f"elapsed {format_duration(now - self.started)} | ETA {eta}")


def create_writer(logdir: str):
    """TensorBoard scalar/image writer on process 0; a no-op writer elsewhere."""
    from clu import metric_writers
    if jax.process_index() > 0:
        return metric_writers.MultiWriter([])
    return metric_writers.AsyncWriter(metric_writers.SummaryWriter(logdir))
