"""The two ways the stack runs: `local` (no Docker) and `compose` (Docker Compose), behind one
interface (`base.Stack`)."""
