"""A stand-in for ``sim.array_runner.run_array_cases`` in the fuzz benches' bookkeeping tests."""


def faulty_run(cases, run: int) -> dict:
    """The result a run of ``cases`` (``(words, inputs, expected[, precision])``) would give, golden's scores,
    except: run 0 returns one wrong score, run 1 one image short and timed out (its watchdog), run 2 an error
    status with the right scores."""
    scores = [row.tolist() for case in cases for row in case[2]]
    res = {"scores": scores, "timed_out": False, "error": None, "passed": True, "sim_cycles": 10, "log": "log",
           "mismatched_images": [], "statuses": [0] * len(scores)}
    if run == 0:
        scores[0] = [v + 1 for v in scores[0]]
        res.update(passed=False, mismatched_images=[0])
    elif run == 1:
        res.update(scores=scores[:-1], timed_out=True, passed=False, error="watchdog")
    elif run == 2:
        res.update(passed=False, statuses=[4] + [0] * (len(scores) - 1))
    return res
