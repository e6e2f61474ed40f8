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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(scalars),
        cmocka_unit_test(reals),
        cmocka_unit_test(strings_and_escapes),
        cmocka_unit_test(containers),
        cmocka_unit_test(pieces_and_take),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
