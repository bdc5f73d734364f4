"""Request models. Unknown fields are refused (extra="forbid") and types are strict: "16" is not 16.

POST /v1/embeddings (OpenAI's shape, plus the `reasoning` extension):

    {"model": "frozen",
     "input": "Men Navy Blue Shirts"                       # a string,
            | ["red dress", "white sneakers"]              # a list of strings,
            | [{"text": "red dress"}, {"image": "<base64 or data URL>"},
               {"image": "data:image/jpeg;base64,...", "text": "in blue"}],   # or objects (mixable)
     "dimensions": 128,              # optional: Matryoshka prefix, re-normalised
     "encoding_format": "float",     # or "base64": little-endian float32 bytes, base64 (as OpenAI)
     "user": "...",                  # accepted and ignored (OpenAI field)
     "input_type": "query",          # extension: query (default) or document (a product: image + title
                                     # as "text", embedded as the index embeds it, with its trace when
                                     # the model reasons; each item then needs both)
     "reasoning": null}              # optional: may only confirm what the model does for documents
                                     # (true: it reasons); a query is embedded without a trace, as
                                     # training embeds queries, so true on a query is a 400

POST /v1/search:

    {"text": "navy shirt", "image": "<base64>",           # at least one of the two
     "k": 10, "filters": {"gender": "Men", "colour": ["Navy Blue", "Blue"]},
     "model": "frozen"}                                   # optional (a search query is a query: no trace)

POST /v1/creative/select (served when serve.creative_model names a creative selector):

    {"image_a": "<base64 or data URL>", "image_b": "<base64 or data URL>",   # the two creatives, A then B
     "interest": "prefers casual blue menswear",                           # optional: the shopper
     "model": "grpo"}                                                      # optional: the selector's name

Token arrays (OpenAI's list-of-int input) are refused with a message: this server embeds text.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

INPUT_SHAPES = "a string, a list of strings, or a list of objects with 'text' and/or 'image'"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputItem(Strict):
    """One input: text, an image (base64 or a data URL), or both (an image+text query)."""

    text: StrictStr | None = None
    image: StrictStr | None = None

    @model_validator(mode="after")
    def _not_empty(self):
        if not self.text and not self.image:
            raise ValueError("an input needs a non-empty 'text' or 'image'")
        return self


class EmbeddingRequest(Strict):
    model: StrictStr
    input: list[InputItem] = Field(description=INPUT_SHAPES)
    dimensions: StrictInt | None = Field(None, ge=1)
    encoding_format: Literal["float", "base64"] = "float"
    user: StrictStr | None = None
    input_type: Literal["query", "document"] = "query"
    reasoning: StrictBool | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _normalise_input(cls, value: Any) -> list:
        """A string or a list of strings / objects -> a list of objects; anything else -> a clear error."""
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ValueError(f"input must be {INPUT_SHAPES}; got {type(value).__name__}")
        if not value:
            raise ValueError("input must not be empty")
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value) or any(isinstance(v, list) for v in value):
            raise ValueError("token arrays are not supported: send the text itself")
        out = []
        for i, v in enumerate(value):
            if isinstance(v, str):
                out.append({"text": v})
            elif isinstance(v, dict):
                out.append(v)
            else:
                raise ValueError(f"input[{i}] must be a string or an object with 'text' and/or 'image'; "
                                 f"got {type(v).__name__}")
        return out


class SearchRequest(Strict):
    model: StrictStr | None = None
    text: StrictStr | None = None
    image: StrictStr | None = None
    k: StrictInt = Field(10, ge=1)
    filters: dict[StrictStr, Any] = Field(default_factory=dict)
    reasoning: StrictBool | None = None  # accepted so that true gets the reasoning policy's 400

    @field_validator("filters")
    @classmethod
    def _filter_values(cls, value: dict[str, Any]) -> dict[str, list[str]]:
        """{"gender": "Men", "colour": ["Navy Blue", "Blue"]} -> every value a list (any of)."""
        out = {}
        for key, v in value.items():
            values = [v] if isinstance(v, str) else v
            if not isinstance(values, list) or not values or not all(isinstance(x, str) for x in values):
                raise ValueError(f"filter {key!r} must be a string or a non-empty list of strings; got {v!r}")
            out[key] = values
        return out

    @model_validator(mode="after")
    def _has_query(self):
        if not self.text and not self.image:
            raise ValueError("a search needs a non-empty 'text', 'image', or both")
        return self

    def query(self) -> InputItem:
        return InputItem(text=self.text or None, image=self.image or None)


class CreativeRequest(Strict):
    image_a: StrictStr = Field(min_length=1)
    image_b: StrictStr = Field(min_length=1)
    interest: StrictStr | None = None
    model: StrictStr | None = None
