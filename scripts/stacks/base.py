"""The interface every stack offers the commands (`up`, `status`, `bench`, ...), so that callers
never ask which stack they hold."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from scripts.stack_settings import StackSettings


class Stack(ABC):
    """Builders, then Triton on what they published. Subclasses: LocalStack, ComposeStack."""

    settings: StackSettings
    shares_host_memory: bool = False  # Triton reads this host's /dev/shm (bench --shared-memory system)

    @property
    @abstractmethod
    def grpc_url(self) -> str: ...

    @property
    @abstractmethod
    def http_url(self) -> str: ...

    @property
    def port_host(self) -> str:
        """Where the published ports are checked before anything starts."""
        return "127.0.0.1"

    @abstractmethod
    def build(self, keys: list[str], skip_current: bool = True) -> None:
        """Run each model's builder in turn; a failing one stops everything, named with its log.
        `skip_current=False` (`stack build`) starts every builder even where a stamp says current."""

    @abstractmethod
    def start_server(self) -> None: ...

    @property
    @abstractmethod
    def embeddings_url(self) -> str:
        """Where the OpenAI-compatible embeddings endpoint answers, host:port."""

    @abstractmethod
    def embeddings_running(self) -> bool:
        """This stack's own embeddings endpoint is running (its port is then no one else's)."""

    @abstractmethod
    def start_embeddings(self) -> None:
        """Start the embeddings endpoint (embeddings_api), after Triton; `up` calls it where
        `settings.serves_embeddings`."""

    @abstractmethod
    def check_alive(self) -> None:
        """Raise a UserError with the server's last log lines when it has exited."""

    @abstractmethod
    def model_folders(self, names: list[str]) -> dict[str, Path]:
        """Each model's published folder (config, manifest, golden answers), readable here."""

    @abstractmethod
    def logs(self, service: str | None) -> str: ...

    @abstractmethod
    def server_running(self) -> bool: ...

    @abstractmethod
    def server_state(self) -> str: ...

    @abstractmethod
    def server_pid(self) -> int | None:
        """tritonserver's process id as this host sees it (for the soak's memory readings)."""

    @abstractmethod
    def down(self, quiet: bool = False) -> None:
        """Stop the server; keep what was built (the next `up` skips every current model)."""

    @abstractmethod
    def clean(self) -> list[str]:
        """Stop everything and delete what was built; returns what was deleted, for the user."""
