"""pytest plugin for mutation runs (`PYTEST_ADDOPTS=-p tools.mutmut_plugin`, set by tools/mutants.py): registers the
hypothesis profile "mutmut" — derandomized like "ci", but without shrinking. A mutant only needs to fail; shrinking
its counterexample can take minutes of CPU and pushed killed mutants past mutmut's time limit."""

from hypothesis import HealthCheck, Phase, settings

settings.register_profile(
    "mutmut",
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
