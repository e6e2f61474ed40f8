/* test_hash.c - the hash type against known digests (PROTOCOL §3). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "exec_hash.h"

static void hex(const unsigned char *d, unsigned n, char *out)
{
    for (unsigned i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static void check(const char *alg, const char *data, long iterations, const char *expected)
{
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    char text[2 * EVP_MAX_MD_SIZE + 1];
    const EVP_MD *md = hash_algorithm(alg);
    assert_non_null(md);
    assert_int_equal(hash_iterate(md, (const unsigned char *)data, strlen(data), iterations,
                                  NULL, out, &len),
                     0);
    hex(out, len, text);
    assert_string_equal(text, expected);
}

/* FIPS 180-2 / RFC 7693 test vectors for "abc". */
static void test_single_round_vectors(void **state)
{
    check("sha256", "abc", 1, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    check("sha1", "abc", 1, "a9993e364706816aba3e25717850c26c9cd0d89d");
    check("sha512", "abc", 1,
          "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
          "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f");
    check("blake2b512", "abc", 1,
          "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d1"
          "7d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923");
}

/* PROTOCOL §3's example; the value comes from Python:
 *   d = b"data"
 *   for _ in range(1000): d = hashlib.sha256(d).digest()
 *   d.hex() */
static void test_iterated_matches_python_loop(void **state)
{
    check("sha256", "data", 1000,
          "b204b64dda5a751f7b12333f8b848a8a543da234805f6ced2e5235ccb8e0b4bd");
    /* sha256 and sha512 take the low-level rounds, sha1 the EVP ones. */
    check("sha512", "data", 1000,
          "9023d5adbda7d48ad43460333c67b10260f94ac489131f37d4042693157f367e"
          "9bee11b7c58b4c4870139c25c83f69b265e49da85e5b1d69735f6d46f7795418");
    check("sha1", "data", 3, "f53fe2d18134e4fe4af3b2ecbd0eda1f4d613760");
}

static void test_unknown_algorithm(void **state)
{
    assert_null(hash_algorithm("md5"));
    assert_null(hash_algorithm("SHA256"));
    assert_null(hash_algorithm(""));
}

static void test_cancel_flag_stops_the_loop(void **state)
{
    atomic_int cancel = 1;
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int len;
    assert_int_equal(hash_iterate(hash_algorithm("sha256"), (const unsigned char *)"x", 1,
                                  10000000, &cancel, out, &len),
                     1);
    /* Fewer rounds than one check interval finish regardless. */
    assert_int_equal(hash_iterate(hash_algorithm("sha256"), (const unsigned char *)"x", 1,
                                  HASH_CANCEL_EVERY - 1, &cancel, out, &len),
                     0);
}

static void test_hex_decoding(void **state)
{
    unsigned char *out;
    size_t len;
    assert_int_equal(hash_decode_hex("00ffA0", 6, &out, &len), 0);
    assert_int_equal(len, 3);
    assert_int_equal(out[0], 0x00);
    assert_int_equal(out[1], 0xff);
    assert_int_equal(out[2], 0xa0);
    free(out);
    assert_int_equal(hash_decode_hex("abc", 3, &out, &len), -1);
    assert_int_equal(hash_decode_hex("zz", 2, &out, &len), -1);
    assert_int_equal(hash_decode_hex("", 0, &out, &len), 0);
    assert_int_equal(len, 0);
    free(out);
}

static void test_base64_decoding(void **state)
{
    unsigned char *out;
    size_t len;
    assert_int_equal(hash_decode_base64("YWJj", 4, &out, &len), 0);
    assert_int_equal(len, 3);
    assert_memory_equal(out, "abc", 3);
    free(out);
    assert_int_equal(hash_decode_base64("YWI=", 4, &out, &len), 0);
    assert_int_equal(len, 2);
    assert_memory_equal(out, "ab", 2);
    free(out);
    assert_int_equal(hash_decode_base64("YQ==", 4, &out, &len), 0);
    assert_int_equal(len, 1);
    assert_memory_equal(out, "a", 1);
    free(out);
    assert_int_equal(hash_decode_base64("YWJ", 3, &out, &len), -1);
    assert_int_equal(hash_decode_base64("Y=Jj", 4, &out, &len), -1);
    assert_int_equal(hash_decode_base64("YW j", 4, &out, &len), -1);
    assert_int_equal(hash_decode_base64("YW!j", 4, &out, &len), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_single_round_vectors),
        cmocka_unit_test(test_iterated_matches_python_loop),
        cmocka_unit_test(test_unknown_algorithm),
        cmocka_unit_test(test_cancel_flag_stops_the_loop),
        cmocka_unit_test(test_hex_decoding),
        cmocka_unit_test(test_base64_decoding),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
