"""A stand-in for ``sim.array_runner.run_array_cases`` in the fuzz benches' bookkeeping tests."""

#: The ``(weight_reads, reads)`` every image of a :func:`faulty_run` reads but one of run 3's, and what the tests'
#: stand-in for :func:`sim.reads.words_read` models for every case (the model itself is checked against the RTL
#: by the suite's array tests and the short fuzz run).
FAKE_READS = (5, 12)


def fake_words_read(*args, **kwargs) -> tuple[int, int]:
    """:data:`FAKE_READS`, whatever the network."""
    return FAKE_READS


def faulty_run(cases, run: int) -> dict:
    """The result a run of ``cases`` (``(words, inputs, expected[, precision])``) would give, golden's scores and
    :data:`FAKE_READS` for each image, except: run 0 returns one wrong score, run 1 one image short and timed out
    (its watchdog), run 2 an error status with the right scores, run 3 one image's ``reads`` one word over. Runs
    past 3 are clean."""
    scores = [row.tolist() for case in cases for row in case[2]]
    weight_reads, reads = [FAKE_READS[0]] * len(scores), [FAKE_READS[1]] * len(scores)
    res = {"scores": scores, "timed_out": False, "error": None, "passed": True, "sim_cycles": 10, "log": "log",
           "mismatched_images": [], "statuses": [0] * len(scores), "image_weight_reads": weight_reads,
           "image_reads": reads}
    if run == 0:
        scores[0] = [v + 1 for v in scores[0]]
        res.update(passed=False, mismatched_images=[0])
    elif run == 1:
        res.update(scores=scores[:-1], timed_out=True, passed=False, error="watchdog",
                   image_weight_reads=weight_reads[:-1], image_reads=reads[:-1])
    elif run == 2:
        res.update(passed=False, statuses=[4] + [0] * (len(scores) - 1))
    elif run == 3:
        reads[-1] += 1
    return res
