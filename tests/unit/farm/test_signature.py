"""Unit tests of the C-like signature parser and the argument check."""

from __future__ import annotations

import ctypes
import re

import pytest

from farm.errors import ArgumentError, FarmError
from farm.signature import DTYPE_SIZES, Signature, parse_signature

SIZE_T = "uint%d" % (ctypes.sizeof(ctypes.c_size_t) * 8)
LONG = "int%d" % (ctypes.sizeof(ctypes.c_long) * 8)
ULONG = "uint%d" % (ctypes.sizeof(ctypes.c_ulong) * 8)
INT = "int%d" % (ctypes.sizeof(ctypes.c_int) * 8)


def summary(signature: Signature):
    """(return kind, return dtype, name, [(param name, kind, dtype), ...])."""
    params = [(p.name, p.type.kind, p.type.dtype) for p in signature.params]
    return signature.restype.kind, signature.restype.dtype, signature.name, params


VADD = "void vadd(const float *a, const float *b, float *c, int64_t n)"


# --- parsing ------------------------------------------------------------------------------------

SPELLINGS = [
    pytest.param(
        VADD,
        (
            "void",
            None,
            "vadd",
            [
                ("a", "pointer", "float32"),
                ("b", "pointer", "float32"),
                ("c", "pointer", "float32"),
                ("n", "int", "int64"),
            ],
        ),
        id="vadd",
    ),
    pytest.param(
        "double(double*, size_t)",
        ("float", "float64", "", [("", "pointer", "float64"), ("", "int", SIZE_T)]),
        id="no-names",
    ),
    pytest.param(
        "void f(float a[], float c[16], int idx [ 4 ])",
        ("void", None, "f", [("a", "pointer", "float32"), ("c", "pointer", "float32"), ("idx", "pointer", INT)]),
        id="arrays",
    ),
    pytest.param(
        "void f(float[], double[8])",
        ("void", None, "f", [("", "pointer", "float32"), ("", "pointer", "float64")]),
        id="unnamed-arrays",
    ),
    pytest.param(
        "void f(const float *restrict a, float *__restrict__ b, float *__restrict c, volatile int *d)",
        (
            "void",
            None,
            "f",
            [
                ("a", "pointer", "float32"),
                ("b", "pointer", "float32"),
                ("c", "pointer", "float32"),
                ("d", "pointer", INT),
            ],
        ),
        id="qualifiers",
    ),
    pytest.param(
        "unsigned long long f(unsigned long long n, long long m, unsigned long long int k)",
        ("int", "uint64", "f", [("n", "int", "uint64"), ("m", "int", "int64"), ("k", "int", "uint64")]),
        id="long-long",
    ),
    pytest.param(
        "void f(int8_t a, int16_t b, int32_t c, int64_t d, uint8_t e, uint16_t g, uint32_t h, uint64_t i)",
        (
            "void",
            None,
            "f",
            [
                ("a", "int", "int8"),
                ("b", "int", "int16"),
                ("c", "int", "int32"),
                ("d", "int", "int64"),
                ("e", "int", "uint8"),
                ("g", "int", "uint16"),
                ("h", "int", "uint32"),
                ("i", "int", "uint64"),
            ],
        ),
        id="stdint",
    ),
    pytest.param(
        "void f(long a, unsigned long b, long int c, size_t d, short e, unsigned short int f2, signed g, unsigned h)",
        (
            "void",
            None,
            "f",
            [
                ("a", "int", LONG),
                ("b", "int", ULONG),
                ("c", "int", LONG),
                ("d", "int", SIZE_T),
                ("e", "int", "int16"),
                ("f2", "int", "uint16"),
                ("g", "int", INT),
                ("h", "int", "uint32"),
            ],
        ),
        id="platform-ints",
    ),
    pytest.param("int f(void)", ("int", INT, "f", []), id="void-params"),
    pytest.param("int f( void )", ("int", INT, "f", []), id="void-params-spaced"),
    pytest.param("int f()", ("int", INT, "f", []), id="empty-params"),
    pytest.param("int f(int n);", ("int", INT, "f", [("n", "int", INT)]), id="semicolon"),
    pytest.param(
        "  int\nf (\n  int n,\n  int m\n ) ;  ",
        ("int", INT, "f", [("n", "int", INT), ("m", "int", INT)]),
        id="newlines",
    ),
    pytest.param(
        "float *alloc(size_t n)", ("pointer", "float32", "alloc", [("n", "int", SIZE_T)]), id="pointer-return"
    ),
    pytest.param(
        "void f(float* a, float*b, float * c)",
        ("void", None, "f", [("a", "pointer", "float32"), ("b", "pointer", "float32"), ("c", "pointer", "float32")]),
        id="star-spacing",
    ),
    pytest.param(
        "void f(float x, double y)",
        ("void", None, "f", [("x", "float", "float32"), ("y", "float", "float64")]),
        id="floats",
    ),
    pytest.param(
        "bool f(bool b, _Bool c)", ("bool", "bool", "f", [("b", "bool", "bool"), ("c", "bool", "bool")]), id="bools"
    ),
    pytest.param(
        "void f(char c, signed char s, unsigned char u)",
        ("void", None, "f", [("c", "int", "int8"), ("s", "int", "int8"), ("u", "int", "uint8")]),
        id="chars-by-value",
    ),
    pytest.param(
        "void f(int integer, float doubled, double int_part)",
        (
            "void",
            None,
            "f",
            [("integer", "int", INT), ("doubled", "float", "float32"), ("int_part", "float", "float64")],
        ),
        id="names-starting-with-type-words",
    ),
]


@pytest.mark.parametrize("text, expected", SPELLINGS)
def test_parse_spellings(text, expected):
    """Common C spellings give the expected return type, name and parameters."""
    assert summary(parse_signature(text)) == expected


@pytest.mark.parametrize(
    "spelling, dtype",
    [
        ("float *", "float32"),
        ("double *", "float64"),
        ("int32_t *", "int32"),
        ("int64_t *", "int64"),
        ("uint8_t *", "uint8"),
        ("uint16_t *", "uint16"),
        ("int16_t *", "int16"),
        ("uint64_t *", "uint64"),
        ("_Float16 *", "float16"),
        ("__fp16 *", "float16"),
        ("half *", "float16"),
        ("float16_t *", "float16"),
        ("bool *", "bool"),
        ("const double *", "float64"),
        ("size_t *", SIZE_T),
    ],
)
def test_pointer_dtype(spelling, dtype):
    """A pointer to a scalar type accepts arrays of that type's dtype."""
    (param,) = parse_signature("void f(%s p)" % spelling).params
    assert (param.name, param.type.kind, param.type.dtype) == ("p", "pointer", dtype)
    assert param.type.ctype is ctypes.c_void_p


@pytest.mark.parametrize(
    "spelling",
    [
        "void *",
        "const void *",
        "char *",
        "const char *",
        "unsigned char *",
        "signed char *",
        "int **",
        "float **",
        "void **",
    ],
)
def test_raw_memory_pointers_accept_any_dtype(spelling):
    """void*, char* and pointers to pointers take an array of any dtype."""
    (param,) = parse_signature("void f(%s p)" % spelling).params
    assert (param.type.kind, param.type.dtype) == ("pointer", None)


@pytest.mark.parametrize(
    "spelling, ctype",
    [
        ("float", ctypes.c_float),
        ("double", ctypes.c_double),
        ("int", ctypes.c_int),
        ("unsigned", ctypes.c_uint),
        ("long", ctypes.c_long),
        ("long long", ctypes.c_longlong),
        ("size_t", ctypes.c_size_t),
        ("int8_t", ctypes.c_int8),
        ("uint64_t", ctypes.c_uint64),
        ("bool", ctypes.c_bool),
        ("char", ctypes.c_char),
    ],
)
def test_scalar_ctypes_match_dtype(spelling, ctype):
    """Every by-value type maps to a ctypes type of the same size as its dtype."""
    (param,) = parse_signature("void f(%s x)" % spelling).params
    assert ctypes.sizeof(param.type.ctype) == ctypes.sizeof(ctype)
    assert DTYPE_SIZES[param.type.dtype] == ctypes.sizeof(ctype)


def test_float_ctypes():
    """float and double by value use c_float and c_double."""
    sig = parse_signature("double f(float x, double y)")
    assert sig.restype.ctype is ctypes.c_double
    assert [p.type.ctype for p in sig.params] == [ctypes.c_float, ctypes.c_double]


def test_void_return_has_no_ctype():
    """A void return has kind void and no ctypes type."""
    restype = parse_signature("void f(void)").restype
    assert (restype.kind, restype.ctype, restype.spelling) == ("void", None, "void")


def test_text_is_normalised():
    """``text`` is the signature with runs of whitespace collapsed."""
    assert parse_signature("int   f(\n\tint  n\n)").text == "int f( int n )"


def test_spelling_drops_qualifiers():
    """The parameter's spelling is its base type and stars, without const/restrict."""
    (param,) = parse_signature("void f(const float *restrict a)").params
    assert param.type.spelling == "float *"


def test_param_named_like_a_scalar_type():
    """``half`` is an ordinary identifier in C and may name a parameter."""
    sig = parse_signature("void scale(float *x, int half)")
    assert summary(sig) == ("void", None, "scale", [("x", "pointer", "float32"), ("half", "int", INT)])


@pytest.mark.parametrize(
    "text",
    [
        "double\n    dot(const float *a, size_t n)",
        "double dot(const float\n    *a, size_t n)",
        "double dot(const float *a,\n size_t\n n)",
    ],
)
def test_line_break_inside_declarator(text):
    """A line break followed by indentation is whitespace like any other, as in an indented multi-line string."""
    sig = parse_signature(text)
    assert summary(sig) == ("float", "float64", "dot", [("a", "pointer", "float32"), ("n", "int", SIZE_T)])


def test_multidimensional_array_param():
    """``float a[4][4]`` decays to a pointer to float: it keeps its name and only takes float32 arrays."""
    (param,) = parse_signature("void f(float a[4][4])").params
    assert (param.name, param.type.kind, param.type.dtype) == ("a", "pointer", "float32")


# --- parse errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, bad",
    [
        ("void f(matrix_t *m)", "matrix_t *"),
        ("void f(long double x)", "long double"),
        ("void f(struct foo *p)", "struct foo *"),
        ("void f(float x y)", "float x"),
        ("void f(int n, ...)", "..."),
        ("complex f(int n)", "complex"),
        ("f(int x)", "f"),
        ("void f(int int)", "int int"),
        ("void f(const)", "const"),
    ],
)
def test_unknown_type(text, bad):
    """Types the parser does not know raise ArgumentError quoting the type and the signature."""
    with pytest.raises(ArgumentError, match=re.escape("unknown type %r in signature %r" % (bad, text))):
        parse_signature(text)


@pytest.mark.parametrize("spelling", ["_Float16", "__fp16", "half", "float16_t"])
def test_float16_by_value_is_refused(spelling):
    """Half floats cannot go through ctypes by value; the message says to pass an array."""
    with pytest.raises(ArgumentError, match="%s cannot be passed by value .*pass it through an array" % spelling):
        parse_signature("void f(%s x)" % spelling)


def test_float16_return_is_refused():
    """A half-float return value is refused like a half-float parameter."""
    with pytest.raises(ArgumentError, match="cannot be passed by value"):
        parse_signature("_Float16 f(void)")


@pytest.mark.parametrize("text", ["", "   ", "void", "void f", "void f(", "void f(int n", "void f int n)", "(int n)"])
def test_malformed_signature(text):
    """Text that is not ``RET NAME(PARAMS)`` raises ArgumentError saying what form is expected."""
    with pytest.raises(ArgumentError, match=re.escape("signature %r is not of the form" % text)):
        parse_signature(text)


@pytest.mark.parametrize("text", ["void f(int a, void)", "void f(void x)", "void f(const void)"])
def test_void_parameter(text):
    """``void`` is only allowed as the whole parameter list, never as one parameter."""
    with pytest.raises(ArgumentError, match="a parameter cannot be void in signature"):
        parse_signature(text)


@pytest.mark.parametrize("text", ["void f(int,)", "void f(,int)", "void f(int a,,int b)"])
def test_empty_parameter(text):
    """An empty slot between commas raises ArgumentError."""
    with pytest.raises(ArgumentError, match="empty parameter in signature"):
        parse_signature(text)


def test_argument_error_is_type_error():
    """ArgumentError is both a FarmError and a TypeError."""
    with pytest.raises(TypeError):
        parse_signature("void f(bogus x)")
    assert issubclass(ArgumentError, FarmError)


# --- Signature.check ----------------------------------------------------------------------------
# Arguments are described by one tag each: a array, i/u integer, f float, n NULL pointer.


@pytest.fixture
def vadd() -> Signature:
    return parse_signature(VADD)


def check_message(signature: Signature, tags: str, dtypes) -> str:
    """The ArgumentError message for a call that must fail."""
    with pytest.raises(ArgumentError) as info:
        signature.check(tags, dtypes)
    return str(info.value)


def test_check_accepts_matching_call(vadd):
    """Arrays of the right dtype and an int pass; check returns None."""
    assert vadd.check("aaai", ["float32", "float32", "float32", None]) is None
    assert vadd.check("aaau", ["float32", "float32", "float32", None]) is None


def test_check_wrong_count(vadd):
    """Too few or too many arguments: name, expected count, the signature text and the count given."""
    assert check_message(vadd, "aaa", ["float32"] * 3) == "vadd takes 4 arguments (%s), got 3" % VADD
    assert check_message(vadd, "aaaii", ["float32"] * 3 + [None, None]).endswith("got 5")
    assert check_message(vadd, "", []).endswith("got 0")


def test_check_wrong_count_singular_and_unnamed():
    """One parameter is "1 argument"; an unnamed function is "the function"."""
    message = check_message(parse_signature("int(int)"), "", [])
    assert message == "the function takes 1 argument (int(int)), got 0"


def test_check_no_params():
    """A function taking void accepts exactly no arguments."""
    sig = parse_signature("int get(void)")
    assert sig.check("", []) is None
    assert check_message(sig, "i", [None]) == "get takes 0 arguments (int get(void)), got 1"


def test_check_array_where_int_expected(vadd):
    """An array for an integer parameter names the argument, its type and what was given."""
    message = check_message(vadd, "aaaa", ["float32"] * 4)
    assert message == "argument 4 'n' of vadd expects an integer (int64_t), got an array"


@pytest.mark.parametrize("tag, got", [("i", "an integer"), ("u", "an integer"), ("f", "a float")])
def test_check_scalar_where_array_expected(vadd, tag, got):
    """A number for a pointer parameter is refused with the pointer's spelling."""
    message = check_message(vadd, tag + "aai", [None, "float32", "float32", None])
    assert message == "argument 1 'a' of vadd expects an array (float *), got %s" % got


def test_check_wrong_array_dtype(vadd):
    """An array of another dtype is refused, naming both dtypes."""
    message = check_message(vadd, "aaai", ["float32", "float64", "float32", None])
    assert message == "argument 2 'b' of vadd expects a float32 array (float *), got a float64 array"


@pytest.mark.parametrize(
    "signature, dtype",
    [("void f(int32_t *p)", "int64"), ("void f(double *p)", "float32"), ("void f(uint8_t *p)", "int8")],
)
def test_check_wrong_array_dtype_other_types(signature, dtype):
    """Pointer dtypes are matched exactly: no widening, no signedness mix-up."""
    assert "got a %s array" % dtype in check_message(parse_signature(signature), "a", [dtype])


def test_check_none_accepted_for_pointers(vadd):
    """``n`` is a NULL pointer and fits any pointer parameter."""
    assert vadd.check("nnai", [None, None, "float32", None]) is None


def test_check_none_refused_for_scalars(vadd):
    """None is not an integer."""
    message = check_message(vadd, "aaan", ["float32"] * 3 + [None])
    assert message == "argument 4 'n' of vadd expects an integer (int64_t), got None"


def test_check_float_refused_for_int(vadd):
    """A float for an integer parameter is refused rather than truncated."""
    message = check_message(vadd, "aaaf", ["float32"] * 3 + [None])
    assert message == "argument 4 'n' of vadd expects an integer (int64_t), got a float"


def test_check_ints_accepted_for_float_params():
    """Integers are numbers: they fit float and double parameters, as do floats."""
    sig = parse_signature("double axpy(double alpha, float beta)")
    assert sig.check("if", [None, None]) is None
    assert sig.check("fi", [None, None]) is None
    assert sig.check("uu", [None, None]) is None


@pytest.mark.parametrize("tag, got", [("a", "an array"), ("n", "None")])
def test_check_float_param_refuses_arrays_and_none(tag, got):
    """A float parameter wants a number."""
    sig = parse_signature("double scale(double alpha)")
    message = check_message(sig, tag, ["float64"])
    assert message == "argument 1 'alpha' of scale expects a number (double), got %s" % got


@pytest.mark.parametrize("spelling", ["void *", "char *", "const unsigned char *", "float **"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "int8", "uint64", "bool", "float16"])
def test_check_raw_pointers_accept_any_dtype(spelling, dtype):
    """void*, char* and double pointers take an array of any dtype."""
    sig = parse_signature("void copy(%s dst)" % spelling)
    assert sig.check("a", [dtype]) is None


def test_check_bool_param_takes_integers_only():
    """A bool parameter takes an integer (True/False travel as ints), not a float."""
    sig = parse_signature("void f(bool flag)")
    assert sig.check("i", [None]) is None
    message = check_message(sig, "f", [None])
    assert message == "argument 1 'flag' of f expects an integer (bool), got a float"


def test_check_unnamed_params_described_by_position():
    """Unnamed parameters are described by position only."""
    sig = parse_signature("void f(float *, int)")
    message = check_message(sig, "aa", ["float32", "float32"])
    assert message == "argument 2 of f expects an integer (int), got an array"


def test_check_reports_first_bad_argument():
    """With several bad arguments, the first one is reported."""
    message = check_message(parse_signature(VADD), "iiif", [None] * 4)
    assert message.startswith("argument 1 'a' of vadd")


def test_check_float16_pointer():
    """A half-float pointer takes float16 arrays and refuses float32 ones."""
    sig = parse_signature("void h(const _Float16 *x)")
    assert sig.check("a", ["float16"]) is None
    message = check_message(sig, "a", ["float32"])
    assert message == "argument 1 'x' of h expects a float16 array (_Float16 *), got a float32 array"


def test_describe():
    """``describe`` names the position, the parameter and the function."""
    sig = parse_signature(VADD)
    assert sig.describe(0) == "argument 1 'a' of vadd"
    assert sig.describe(3) == "argument 4 'n' of vadd"
    assert parse_signature("int(int)").describe(0) == "argument 1 of the function"


def test_every_dtype_has_a_size():
    """DTYPE_SIZES covers every dtype a pointer parameter can demand, with sizes matching the bit width."""
    for name, size in DTYPE_SIZES.items():
        bits = re.search(r"\d+$", name)
        assert size == (int(bits.group()) // 8 if bits else 1)


@pytest.mark.parametrize(
    "text, values, bad",
    [
        ("int f(int a, int b)", [2**31, 1], "argument 1 'a' of f is 2147483648, outside the range of int"),
        ("int f(int a, int b)", [1, -(2**31) - 1], "argument 2 'b' of f is -2147483649, outside the range of int"),
        ("void f(uint8_t x)", [256], "outside the range of uint8_t (0 to 255)"),
        ("void f(uint32_t x)", [-1], "outside the range of uint32_t (0 to 4294967295)"),
        ("void f(int64_t x)", [2**63], "outside the range of int64_t"),
    ],
)
def test_check_refuses_integers_outside_their_c_type(text, values, bad):
    """Integers that ctypes would silently truncate are refused with the type's range."""
    signature = parse_signature(text)
    with pytest.raises(ArgumentError, match=re.escape(bad)):
        signature.check("i" * len(values), [None] * len(values), values)


def test_check_accepts_integers_at_the_edges_of_their_c_type():
    """The lowest and highest value of each integer type pass."""
    signature = parse_signature("void f(int8_t a, uint16_t b, int32_t c, uint64_t d)")
    signature.check("iiiu", [None] * 4, [-128, 65535, -(2**31), 2**64 - 1])
    signature.check("iiii", [None] * 4, [127, 0, 2**31 - 1, 0])


def test_platform_types_take_the_board_sizes():
    """``long`` and ``size_t`` follow the sizes the board reports, not the host's."""
    signature = parse_signature("void f(long *a, size_t n)", sizes={"long": 4, "size_t": 4})
    assert [param.type.dtype for param in signature.params] == ["int32", "uint32"]
    signature.check("ai", ["int32", None], [1, 2**32 - 1])
    with pytest.raises(ArgumentError, match="expects a int32 array"):
        signature.check("ai", ["int64", None], [1, 1])
    with pytest.raises(ArgumentError, match="outside the range of size_t"):
        signature.check("ai", ["int32", None], [1, 2**32])


def test_unnamed_array_and_scalar_parameters():
    """``int64_t[]`` without a name is an int64 pointer; a bare ``size_t`` is an unnamed size_t."""
    signature = parse_signature("void f(int64_t[], size_t)")
    assert summary(signature) == ("void", None, "f", [("", "pointer", "int64"), ("", "int", SIZE_T)])
    assert [param.type.spelling for param in signature.params] == ["int64_t *", "size_t"]
    assert signature.params[0].type.ctype is ctypes.c_void_p
    assert signature.params[1].type.ctype is getattr(ctypes, "c_" + SIZE_T)


def test_board_size_without_a_c_integer_type_is_refused():
    """A board that reports ``long`` as 3 bytes gets an ArgumentError naming the size, not a KeyError."""
    with pytest.raises(ArgumentError, match="3 bytes") as caught:
        parse_signature("void f(long x)", sizes={"long": 3})
    assert "long" in str(caught.value)
