"""Host policies: TOML language, validation, compilation to kernel tables, verdicts.

Flow: ``source.load_policy_set`` (files -> PolicySet) -> ``check.check`` (findings) ->
``compile.compile_policy_set`` (the kernel's tables, byte for byte) -> ``evaluate.Evaluator``
(userspace verdicts over those same tables) and ``mechanisms.plan`` (which hook enforces each
rule on this host). Language reference: policies/README.md.
"""
