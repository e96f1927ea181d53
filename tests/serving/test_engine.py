"""serving/engine.py, without a model: a job's sequences, and a batch's metrics as Prometheus reads them."""

from rankrm.serving.engine import Job, Metrics


def test_a_jobs_sequences_are_its_rows_or_its_groups_completions():
    assert Job("pairs", [[1, 2], [3]], tokens=3).sequences == 2
    assert Job("groups", [[[1, 2], [1, 3]], [[4], [5], [6]]], tokens=7).sequences == 5


def test_a_batch_is_counted_in_requests_sequences_tokens_and_model_time():
    """Two jobs (2 + 5 sequences, 3 + 7 tokens) scored in 0.5 s: 10 tokens, 20 tokens per second; a second batch
    of one job in 0 s sets the rate to 0, not infinity."""
    m = Metrics()
    jobs = [Job("pairs", [[1, 2], [3]], tokens=3), Job("groups", [[[1, 2], [1, 3]], [[4], [5], [6]]], tokens=7)]
    m.observe_batch(jobs, 0.5)

    def value(name, **labels):
        return m.registry.get_sample_value(name, labels)

    assert value("rankrm_tokens_total") == 10 and value("rankrm_sequences_total") == 7
    assert value("rankrm_model_seconds_total") == 0.5 and value("rankrm_tokens_per_second") == 20.0
    assert value("rankrm_batch_requests_count") == 1 and value("rankrm_batch_requests_sum") == 2
    assert (
        value("rankrm_batch_sequences_bucket", le="8.0") == 1 and value("rankrm_batch_sequences_bucket", le="4.0") == 0
    )
    m.observe_batch(jobs[:1], 0.0)
    assert value("rankrm_tokens_per_second") == 0.0 and value("rankrm_tokens_total") == 13
