"""ESC-Eval and MLLMGuard as evaluation-harness tasks.

Kept import-light on purpose: ``esc_guard_tasks.pth`` imports a submodule of this
package at every interpreter start, so nothing heavy may be imported here.
"""

__version__ = "0.1.0"
