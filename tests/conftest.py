import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ARCHS = ["llama", "qwen2", "gemma3", "gpt2"]


@pytest.fixture(scope="session", params=ARCHS)
def tiny(request):
    from interp.testing import tiny_model

    return tiny_model(request.param)


@pytest.fixture(scope="session")
def tiny_llama():
    from interp.testing import tiny_model

    return tiny_model("llama")


@pytest.fixture(scope="session")
def smollm():
    import interp

    return interp.load_model("smollm2-135m-instruct", progress=False)


@pytest.fixture(scope="session")
def qwen():
    import interp

    return interp.load_model("qwen2.5-coder-0.5b-instruct", progress=False)
