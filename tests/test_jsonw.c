/* test_jsonw.c - the JSON writer against jansson: the same text as
 * json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) for every kind of value,
 * every escape and the awkward numbers; and the length it reports is the
 * length of the text (RESP sends that many bytes), measured without writing
 * it too (a group counts its children's records so). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "jsonw.h"

static void same_as_jansson(json_t *v)
{
    char *want = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    size_t len = 0;
    char *got = jsonw_dumps(v, &len);
    assert_non_null(want);
    assert_non_null(got);
    assert_string_equal(got, want);
    assert_int_equal(len, strlen(want));
    struct jbuf measured = {.measure = true};
    jbuf_value(&measured, v);
    assert_false(measured.failed);
    assert_int_equal(measured.len, strlen(want));
    assert_null(measured.p);    /* nothing written, nothing allocated */
    free(want);
    free(got);
    json_decref(v);
}

static void scalars(void **state)
{
    (void)state;
    same_as_jansson(json_null());
    same_as_jansson(json_true());
    same_as_jansson(json_false());
    const json_int_t ints[] = {0, 1, -1, 9, 10, -10, 123456789, INT64_MAX, INT64_MIN, INT64_MIN + 1};
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++)
        same_as_jansson(json_integer(ints[i]));
}

static void reals(void **state)
{
    (void)state;
    const double reals[] = {0.0,    -0.0,    1.0,     -1.5,   0.1,     1e20,   1e21,
                            1e-5,   1e-7,    1.5e300, -2e-308, 5e-324, 3.141592653589793,
                            1e100,  123456789012345678.0, 1e16, 1e17, 100.0, 2.5e-10,
                            1.7976931348623157e308};
    for (size_t i = 0; i < sizeof(reals) / sizeof(reals[0]); i++)
        same_as_jansson(json_real(reals[i]));
}

static void strings_and_escapes(void **state)
{
    (void)state;
    same_as_jansson(json_string(""));
    same_as_jansson(json_string("plain text"));
    same_as_jansson(json_string("quote \" backslash \\ slash /"));
    same_as_jansson(json_string("\b\f\n\r\t"));
    same_as_jansson(json_string("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 del \x7f"));
    char controls[32];
    for (int c = 1; c < 32; c++)
        controls[c - 1] = (char)c;
    controls[31] = '\0';
    same_as_jansson(json_string(controls));
    same_as_jansson(json_stringn("nul\0inside", 10));
}

static void containers(void **state)
{
    (void)state;
    same_as_jansson(json_object());
    same_as_jansson(json_array());
    same_as_jansson(json_pack("{s:i, s:s, s:[i, f, n, b], s:{s:{}, s:[]}}", "b", 2, "a", "x",
                              "list", 1, 2.5, 0, "nested", "empty", "none"));
    /* Key order is the object's own (insertion) order, keys are escaped. */
    json_t *o = json_object();
    json_object_set_new(o, "z", json_integer(1));
    json_object_set_new(o, "a\"\n", json_integer(2));
    json_object_set_new(o, "m", json_string("\x01"));
    same_as_jansson(o);
    /* Deep nesting, as a parsed JSON response can have. */
    json_t *deep = json_integer(7);
    for (int i = 0; i < 1000; i++)
        deep = i % 2 ? json_pack("[o]", deep) : json_pack("{s:o}", "k", deep);
    same_as_jansson(deep);
    /* A parsed document: what executors hand back. */
    json_error_t err;
    same_as_jansson(json_loads("{\"rows\":[{\"abalance\":0,\"f\":1.25,\"t\":\"x\\u0000y\"}],"
                               "\"row_count\":1,\"command\":\"SELECT 1\"}",
                               JSON_ALLOW_NUL, &err));
}

static void pieces_and_take(void **state)
{
    (void)state;
    struct jbuf b = {0};
    jbuf_lit(&b, "{\"n\":");
    jbuf_int(&b, -42);
    jbuf_lit(&b, ",\"s\":");
    jbuf_string(&b, "a\tb", 3);
    jbuf_lit(&b, "}");
    size_t len;
    char *text = jbuf_take(&b, &len);
    assert_string_equal(text, "{\"n\":-42,\"s\":\"a\\tb\"}");
    assert_int_equal(len, strlen(text));
    assert_null(b.p);
    free(text);
    /* Large: grows past many doublings. */
    for (int i = 0; i < 100000; i++)
        jbuf_lit(&b, "0123456789");
    text = jbuf_take(&b, &len);
    assert_int_equal(len, 1000000);
    free(text);
    /* A failed buffer gives NULL and frees what it had. */
    jbuf_lit(&b, "partial");
    b.failed = true;
    assert_null(jbuf_take(&b, &len));
}

/* A value nested DEPTH levels (DEPTH >= 1), its deep branch reached through
 * arrays or objects (alternating when MIXED) and placed after a shallow
 * sibling at every level, so the walk must go past the first child. */
static json_t *nested(int depth, bool objects, bool mixed)
{
    json_t *v = objects ? json_object() : json_array();
    for (int level = 1; level < depth; level++) {
        bool object = mixed ? level % 2 == 0 : objects;
        json_t *outer = object ? json_object() : json_array();
        if (object) {
            json_object_set_new(outer, "a", json_integer(level));
            json_object_set_new(outer, "b", v);
        } else {
            json_array_append_new(outer, json_integer(level));
            json_array_append_new(outer, v);
        }
        v = outer;
    }
    return v;
}

static void too_deep(void **state)
{
    (void)state;
    const int limit = JSONW_VALUE_MAX_NESTING;
    for (int shape = 0; shape < 3; shape++) {
        json_t *at = nested(limit, shape == 1, shape == 2);
        json_t *over = nested(limit + 1, shape == 1, shape == 2);
        /* The text's length only rules out the walk: it is never shorter
         * than the nesting. */
        assert_false(jsonw_too_deep(at, 1u << 20));
        assert_true(jsonw_too_deep(over, 1u << 20));
        assert_false(jsonw_too_deep(over, (size_t)limit));
        json_decref(at);
        json_decref(over);
    }
    json_t *scalar = json_integer(1);
    assert_false(jsonw_too_deep(scalar, 1u << 20));
    json_decref(scalar);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(scalars),
        cmocka_unit_test(reals),
        cmocka_unit_test(strings_and_escapes),
        cmocka_unit_test(containers),
        cmocka_unit_test(pieces_and_take),
        cmocka_unit_test(too_deep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
