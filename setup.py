"""Only job beyond setup.cfg: write ``esc_guard_tasks.pth`` at the wheel root.

Neither harness looks up task entry points, so a one-line ``.pth`` file installs a
lazy import hook (``esc_guard_tasks.autoload``) that adds our task folder to the
harness's TaskManager when the harness itself is imported. setup.cfg cannot place a
file outside a package, hence this build_py extension.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "esc_guard_tasks.pth"
PTH_LINE = "import esc_guard_tasks.autoload\n"  # a .pth line starting with "import" runs at startup


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        Path(self.build_lib, PTH).write_text(PTH_LINE, encoding="utf-8")

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH)]


setup(cmdclass={"build_py": BuildPyWithPth})
