/* encode.c - bytes to JSON (see encode.h). */
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "encode.h"

void hex_encode(const unsigned char *bytes, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * len] = '\0';
}

int json_set_text_or_base64(json_t *obj, const char *text_key, const char *base64_key,
                            const char *buf, size_t len)
{
    /* json_stringn checks UTF-8 but lets NUL through: refuse that too. */
    json_t *text = len == 0 ? json_string("")
                   : memchr(buf, '\0', len) ? NULL : json_stringn(buf, len);
    if (text)
        return json_object_set_new(obj, text_key, text);
    char *b64 = malloc(4 * ((len + 2) / 3) + 1);
    if (!b64)
        return -1;
    EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)buf, (int)len);
    int rc = json_object_set_new(obj, base64_key, json_string(b64));
    free(b64);
    return rc;
}
