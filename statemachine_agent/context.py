"""The typed context: a pydantic model that validates every assignment."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Context"]


class Context(BaseModel):
    """Base class for workflow contexts: validated on assignment, no unknown fields.

    Any ``pydantic.BaseModel`` with ``validate_assignment=True`` works too; this one just sets the
    safe defaults.
    """

    model_config = ConfigDict(validate_assignment=True, extra="forbid")
