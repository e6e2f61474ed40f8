/* exec_hash.h - the "hash" type's pure parts, exposed for unit tests. */
#ifndef JOBD_EXEC_HASH_H
#define JOBD_EXEC_HASH_H

#include <openssl/evp.h>
#include <stdatomic.h>
#include <stddef.h>

/* How many iterations run between two looks at the cancel flag: small enough
 * that a cancelled 10-million-iteration job stops within a millisecond. */
#define HASH_CANCEL_EVERY 1024

/* digest_1 = H(data), digest_k = H(digest_(k-1)) over the raw bytes.
 * Returns 0, 1 when *cancel became non-zero, -1 on an OpenSSL error. */
int hash_iterate(const EVP_MD *md, const unsigned char *data, size_t len, long iterations,
                 atomic_int *cancel, unsigned char *out, unsigned int *outlen);

/* The digest named by PROTOCOL §3 ("sha256", "sha512", "sha1", "blake2b512"),
 * or NULL. Fetched once and cached. */
const EVP_MD *hash_algorithm(const char *name);

/* Decode TEXT of LEN bytes into a malloc'ed buffer; -1 when it is not valid
 * hex / base64. */
int hash_decode_hex(const char *text, size_t len, unsigned char **out, size_t *outlen);
int hash_decode_base64(const char *text, size_t len, unsigned char **out, size_t *outlen);

#endif
