from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FloatMatrix(_message.Message):
    __slots__ = ("data", "shape", "dtype")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    def __init__(self, data: _Optional[bytes] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ...) -> None: ...

class UserFeatures(_message.Message):
    __slots__ = ("history", "concepts", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    history: _containers.RepeatedScalarFieldContainer[str]
    concepts: _containers.RepeatedScalarFieldContainer[str]
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, history: _Optional[_Iterable[str]] = ..., concepts: _Optional[_Iterable[str]] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Context(_message.Message):
    __slots__ = ("ts_ms", "attributes", "dense")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class DenseEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TS_MS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    DENSE_FIELD_NUMBER: _ClassVar[int]
    ts_ms: int
    attributes: _containers.ScalarMap[str, str]
    dense: _containers.ScalarMap[str, float]
    def __init__(self, ts_ms: _Optional[int] = ..., attributes: _Optional[_Mapping[str, str]] = ..., dense: _Optional[_Mapping[str, float]] = ...) -> None: ...

class GetEmbeddingsRequest(_message.Message):
    __slots__ = ("kind", "ids")
    KIND_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kind: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetEmbeddingsResponse(_message.Message):
    __slots__ = ("embeddings", "found", "model_version")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    embeddings: FloatMatrix
    found: _containers.RepeatedScalarFieldContainer[bool]
    model_version: str
    def __init__(self, embeddings: _Optional[_Union[FloatMatrix, _Mapping]] = ..., found: _Optional[_Iterable[bool]] = ..., model_version: _Optional[str] = ...) -> None: ...

class EmbedUserRequest(_message.Message):
    __slots__ = ("user_id", "features")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    features: UserFeatures
    def __init__(self, user_id: _Optional[str] = ..., features: _Optional[_Union[UserFeatures, _Mapping]] = ...) -> None: ...

class EmbedUserResponse(_message.Message):
    __slots__ = ("embedding", "model_version", "found")
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    embedding: FloatMatrix
    model_version: str
    found: bool
    def __init__(self, embedding: _Optional[_Union[FloatMatrix, _Mapping]] = ..., model_version: _Optional[str] = ..., found: _Optional[bool] = ...) -> None: ...

class RetrieveRequest(_message.Message):
    __slots__ = ("user_id", "user_vector", "k", "exclude_ids", "features", "exclude_history")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_VECTOR_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_IDS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    user_vector: FloatMatrix
    k: int
    exclude_ids: _containers.RepeatedScalarFieldContainer[str]
    features: UserFeatures
    exclude_history: bool
    def __init__(self, user_id: _Optional[str] = ..., user_vector: _Optional[_Union[FloatMatrix, _Mapping]] = ..., k: _Optional[int] = ..., exclude_ids: _Optional[_Iterable[str]] = ..., features: _Optional[_Union[UserFeatures, _Mapping]] = ..., exclude_history: _Optional[bool] = ...) -> None: ...

class RetrieveResponse(_message.Message):
    __slots__ = ("item_ids", "scores", "model_version")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    scores: _containers.RepeatedScalarFieldContainer[float]
    model_version: str
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., scores: _Optional[_Iterable[float]] = ..., model_version: _Optional[str] = ...) -> None: ...

class ConceptContribution(_message.Message):
    __slots__ = ("concept", "contribution", "display")
    CONCEPT_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_FIELD_NUMBER: _ClassVar[int]
    concept: str
    contribution: float
    display: str
    def __init__(self, concept: _Optional[str] = ..., contribution: _Optional[float] = ..., display: _Optional[str] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("item_id", "contributions")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    contributions: _containers.RepeatedCompositeFieldContainer[ConceptContribution]
    def __init__(self, item_id: _Optional[str] = ..., contributions: _Optional[_Iterable[_Union[ConceptContribution, _Mapping]]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("user_id", "user_features", "item_ids", "context", "explain")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_FEATURES_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    user_features: UserFeatures
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    context: Context
    explain: bool
    def __init__(self, user_id: _Optional[str] = ..., user_features: _Optional[_Union[UserFeatures, _Mapping]] = ..., item_ids: _Optional[_Iterable[str]] = ..., context: _Optional[_Union[Context, _Mapping]] = ..., explain: _Optional[bool] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("probabilities", "found", "model_version", "explanations")
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPLANATIONS_FIELD_NUMBER: _ClassVar[int]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    found: _containers.RepeatedScalarFieldContainer[bool]
    model_version: str
    explanations: _containers.RepeatedCompositeFieldContainer[Explanation]
    def __init__(self, probabilities: _Optional[_Iterable[float]] = ..., found: _Optional[_Iterable[bool]] = ..., model_version: _Optional[str] = ..., explanations: _Optional[_Iterable[_Union[Explanation, _Mapping]]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("user_id", "item_id", "user_features")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    USER_FEATURES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    user_features: UserFeatures
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., user_features: _Optional[_Union[UserFeatures, _Mapping]] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("contributions", "model_version", "score", "biases")
    class BiasesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    BIASES_FIELD_NUMBER: _ClassVar[int]
    contributions: _containers.RepeatedCompositeFieldContainer[ConceptContribution]
    model_version: str
    score: float
    biases: _containers.ScalarMap[str, float]
    def __init__(self, contributions: _Optional[_Iterable[_Union[ConceptContribution, _Mapping]]] = ..., model_version: _Optional[str] = ..., score: _Optional[float] = ..., biases: _Optional[_Mapping[str, float]] = ...) -> None: ...
