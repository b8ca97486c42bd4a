"""A simulated kill of the continuous engine, for the resume tests (test_engine, test_stops)."""
from mathft_jax.sampling import engine


def crash_on_chunk(monkeypatch, number: int) -> None:
    """Make the engine's `number`-th decode chunk raise RuntimeError("simulated kill"), as a
    kill while it decodes would stop it; monkeypatch's undo restores the engine."""
    calls, real = [], engine.compiled

    def compiled(name, cfg, **static_args):
        fn = real(name, cfg, **static_args)
        if name != "chunk":
            return fn

        def call(*args):
            calls.append(1)
            if len(calls) == number:
                raise RuntimeError("simulated kill")
            return fn(*args)
        return call

    monkeypatch.setattr(engine, "compiled", compiled)
