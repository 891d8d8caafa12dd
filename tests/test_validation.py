"""dihs_model.validation: pydantic and FastAPI validation errors turned into one "where: what" line."""

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError, model_validator

from dihs_model.validation import validation_message


class Inner(BaseModel):
    ratio: float = Field(ge=0.0, le=1.0)


class Outer(BaseModel):
    name: str
    inner: Inner
    items: list[int] = []

    @model_validator(mode="after")
    def _named(self):
        if self.name == "bad":
            raise ValueError("name must not be 'bad'")
        return self


def _error(data: dict) -> ValidationError:
    with pytest.raises(ValidationError) as e:
        Outer.model_validate(data)
    return e.value


def test_each_error_is_its_dotted_location_and_message():
    e = _error({"name": "x", "inner": {"ratio": 2.0}, "items": [1, "two"]})
    assert validation_message(e) == (
        "inner.ratio: Input should be less than or equal to 1; "
        "items.1: Input should be a valid integer, unable to parse string as an integer"
    )


def test_only_the_first_limit_errors_are_kept():
    e = _error({"inner": {"ratio": -1}, "items": ["a", "b", "c"]})  # name missing too: 5 errors
    assert len(e.errors()) == 5
    assert validation_message(e, limit=1) == "name: Field required"
    assert validation_message(e, limit=2).count("; ") == 1
    assert validation_message(e).count("; ") == 2  # 3 by default


def test_a_model_level_error_is_its_message_without_pydantics_prefix():
    assert validation_message(_error({"name": "bad", "inner": {"ratio": 0.5}})) == "name must not be 'bad'"


def test_fastapis_body_wrapper_is_left_out_of_the_location_unless_asked():
    exc = RequestValidationError(
        [
            {"loc": ("body", "texts", 0), "msg": "Input should be a valid string", "type": "string_type"},
            {
                "loc": ("body",),
                "msg": "Value error, give exactly one of 'text' or 'texts'",
                "type": "value_error",
            },
        ]
    )
    assert validation_message(exc) == (
        "texts.0: Input should be a valid string; give exactly one of 'text' or 'texts'"
    )
    assert validation_message(exc, skip=()).startswith("body.texts.0: ")


def test_an_error_without_a_message_still_says_something():
    exc = RequestValidationError([{"loc": ("query", "limit"), "type": "weird"}])
    assert validation_message(exc) == "query.limit: invalid"


def test_any_other_exception_is_its_own_message():
    assert validation_message(ValueError("plain words")) == "plain words"
    assert validation_message(KeyError("k")) == "'k'"
