/* Certificate naming and creation; the scheme is in pki.h.
 *
 * Everything here is plain OpenSSL 3 API (EVP_PKEY_Q_keygen, X509_*), never
 * the openssl program, so `paxfs init` works wherever libssl does. Files are
 * created with O_EXCL and their final mode from the start, so a private key
 * is never readable by others, not even for a moment. */
#include "net/pki.h"

#include "base/assert.h"
#include "base/buf.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <sys/stat.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#define URI_PREFIX "paxfs:"

static void hex(const uint8_t *p, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = '\0';
}

void pki_identity_uri(uint32_t node, const uint8_t cluster_id[PKI_CLUSTER_ID_BYTES],
                      char out[PKI_URI_BYTES])
{
    char id[2 * PKI_CLUSTER_ID_BYTES + 1];
    hex(cluster_id, PKI_CLUSTER_ID_BYTES, id);
    snprintf(out, PKI_URI_BYTES, URI_PREFIX "node:%u:cluster:%s", node, id);
}

void pki_client_uri(const uint8_t cluster_id[PKI_CLUSTER_ID_BYTES], char out[PKI_URI_BYTES])
{
    char id[2 * PKI_CLUSTER_ID_BYTES + 1];
    hex(cluster_id, PKI_CLUSTER_ID_BYTES, id);
    snprintf(out, PKI_URI_BYTES, URI_PREFIX "client:cluster:%s", id);
}

/* Reads exactly 2 * PKI_CLUSTER_ID_BYTES hex digits (the whole rest of p).
 * Case is not checked here: callers compare with the canonical form. */
static int parse_cluster_hex(const char *p, uint8_t cluster_id[PKI_CLUSTER_ID_BYTES])
{
    if (strlen(p) != 2 * PKI_CLUSTER_ID_BYTES)
        return -EACCES;
    for (int i = 0; i < PKI_CLUSTER_ID_BYTES; i++) {
        unsigned v;
        if (!isxdigit((unsigned char)p[2 * i]) || !isxdigit((unsigned char)p[2 * i + 1]) ||
            sscanf(p + 2 * i, "%2x", &v) != 1)
            return -EACCES;
        cluster_id[i] = (uint8_t)v;
    }
    return 0;
}

/* Parses "paxfs:node:<K>:cluster:<32 hex>" exactly, by regenerating the
 * canonical form and comparing: one spelling per identity. */
static int parse_node_uri(const char *text, uint32_t *node,
                          uint8_t cluster_id[PKI_CLUSTER_ID_BYTES])
{
    static const char head[] = URI_PREFIX "node:";
    if (strncmp(text, head, sizeof head - 1) != 0)
        return -EACCES;
    const char *p = text + sizeof head - 1;
    uint64_t k = 0;
    int digits = 0;
    for (; *p >= '0' && *p <= '9' && digits < 10; p++, digits++)
        k = k * 10 + (uint64_t)(*p - '0');
    if (digits == 0 || k == 0 || k > UINT32_MAX)
        return -EACCES;
    static const char mid[] = ":cluster:";
    if (strncmp(p, mid, sizeof mid - 1) != 0)
        return -EACCES;
    uint8_t id[PKI_CLUSTER_ID_BYTES];
    if (parse_cluster_hex(p + sizeof mid - 1, id) != 0)
        return -EACCES;
    char canon[PKI_URI_BYTES];
    pki_identity_uri((uint32_t)k, id, canon);
    if (strcmp(canon, text) != 0)
        return -EACCES;
    *node = (uint32_t)k;
    memcpy(cluster_id, id, sizeof id);
    return 0;
}

/* Parses "paxfs:client:cluster:<32 hex>" exactly, the same way. */
static int parse_client_uri(const char *text, uint8_t cluster_id[PKI_CLUSTER_ID_BYTES])
{
    static const char head[] = URI_PREFIX "client:cluster:";
    if (strncmp(text, head, sizeof head - 1) != 0)
        return -EACCES;
    uint8_t id[PKI_CLUSTER_ID_BYTES];
    if (parse_cluster_hex(text + sizeof head - 1, id) != 0)
        return -EACCES;
    char canon[PKI_URI_BYTES];
    pki_client_uri(id, canon);
    if (strcmp(canon, text) != 0)
        return -EACCES;
    memcpy(cluster_id, id, sizeof id);
    return 0;
}

/* The certificate's one "paxfs:" SAN URI as a C string; -EACCES if it has
 * none, several, or one that is too long or holds a NUL. */
static int cert_paxfs_uri(X509 *cert, char text[PKI_URI_BYTES])
{
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    if (!names)
        return -EACCES;
    int found = 0, rc = -EACCES;
    int n = sk_GENERAL_NAME_num(names);
    for (int i = 0; i < n; i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
        if (gn->type != GEN_URI)
            continue;
        const ASN1_IA5STRING *uri = gn->d.uniformResourceIdentifier;
        const unsigned char *s = ASN1_STRING_get0_data(uri);
        int len = ASN1_STRING_length(uri);
        if (len < (int)sizeof URI_PREFIX - 1 || memcmp(s, URI_PREFIX, sizeof URI_PREFIX - 1) != 0)
            continue;
        found++;
        rc = -EACCES;
        if (len < PKI_URI_BYTES && memchr(s, 0, (size_t)len) == NULL) {
            memcpy(text, s, (size_t)len);
            text[len] = '\0';
            rc = 0;
        }
    }
    GENERAL_NAMES_free(names);
    return found == 1 ? rc : -EACCES;
}

int pki_cert_identity(X509 *cert, uint32_t *node, uint8_t cluster_id[PKI_CLUSTER_ID_BYTES])
{
    char text[PKI_URI_BYTES];
    uint32_t k;
    uint8_t id[PKI_CLUSTER_ID_BYTES];
    if (cert_paxfs_uri(cert, text) != 0 || parse_node_uri(text, &k, id) != 0)
        return -EACCES;
    *node = k;
    memcpy(cluster_id, id, sizeof id);
    return 0;
}

int pki_cert_client_identity(X509 *cert, uint8_t cluster_id[PKI_CLUSTER_ID_BYTES])
{
    char text[PKI_URI_BYTES];
    uint8_t id[PKI_CLUSTER_ID_BYTES];
    if (cert_paxfs_uri(cert, text) != 0 || parse_client_uri(text, id) != 0)
        return -EACCES;
    memcpy(cluster_id, id, sizeof id);
    return 0;
}

EVP_PKEY *pki_key_new(void)
{
    return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
}

static bool add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!ext)
        return false;
    bool ok = X509_add_ext(cert, ext, -1) == 1;
    X509_EXTENSION_free(ext);
    return ok;
}

static bool add_san_uri(X509 *cert, const char *uri)
{
    GENERAL_NAMES *names = GENERAL_NAMES_new();
    GENERAL_NAME *gn = GENERAL_NAME_new();
    ASN1_IA5STRING *s = ASN1_IA5STRING_new();
    bool ok = names && gn && s && ASN1_STRING_set(s, uri, (int)strlen(uri)) == 1;
    if (ok) {
        GENERAL_NAME_set0_value(gn, GEN_URI, s);
        s = NULL;
        ok = sk_GENERAL_NAME_push(names, gn) > 0;
        if (ok)
            gn = NULL;
    }
    ok = ok && X509_add1_ext_i2d(cert, NID_subject_alt_name, names, 0,
                                 X509V3_ADD_DEFAULT) == 1;
    ASN1_IA5STRING_free(s);
    GENERAL_NAME_free(gn);
    GENERAL_NAMES_free(names);
    return ok;
}

/* Version 3, random positive serial, validity, subject CN, public key. */
static X509 *cert_base(EVP_PKEY *key, const char *cn, time_t not_before, time_t not_after)
{
    X509 *cert = X509_new();
    if (!cert)
        return NULL;
    uint8_t serial[16];
    bool ok = X509_set_version(cert, X509_VERSION_3) == 1 && RAND_bytes(serial, sizeof serial) == 1;
    if (ok) {
        serial[0] &= 0x7f; /* positive */
        serial[0] |= 0x40; /* and of a fixed length */
        BIGNUM *bn = BN_bin2bn(serial, sizeof serial, NULL);
        ok = bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)) != NULL;
        BN_free(bn);
    }
    ok = ok && ASN1_TIME_set(X509_getm_notBefore(cert), not_before) != NULL;
    ok = ok && ASN1_TIME_set(X509_getm_notAfter(cert), not_after) != NULL;
    X509_NAME *name = X509_get_subject_name(cert);
    ok = ok && X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8,
                                          (const unsigned char *)"paxfs", -1, -1, 0) == 1;
    ok = ok && X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                          (const unsigned char *)cn, -1, -1, 0) == 1;
    ok = ok && X509_set_pubkey(cert, key) == 1;
    if (!ok) {
        X509_free(cert);
        return NULL;
    }
    return cert;
}

X509 *pki_ca_new(EVP_PKEY *ca_key, const uint8_t cluster_id[PKI_CLUSTER_ID_BYTES],
                 time_t not_before, time_t not_after)
{
    char id[2 * PKI_CLUSTER_ID_BYTES + 1], cn[80];
    hex(cluster_id, PKI_CLUSTER_ID_BYTES, id);
    snprintf(cn, sizeof cn, "paxfs cluster CA %s", id);
    X509 *ca = cert_base(ca_key, cn, not_before, not_after);
    if (!ca)
        return NULL;
    bool ok = X509_set_issuer_name(ca, X509_get_subject_name(ca)) == 1 &&
              add_ext(ca, ca, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") &&
              add_ext(ca, ca, NID_key_usage, "critical,keyCertSign,cRLSign") &&
              add_ext(ca, ca, NID_subject_key_identifier, "hash") &&
              X509_sign(ca, ca_key, EVP_sha256()) > 0;
    if (!ok) {
        X509_free(ca);
        return NULL;
    }
    return ca;
}

X509 *pki_node_cert_new(X509 *ca, EVP_PKEY *ca_key, EVP_PKEY *node_key, uint32_t node,
                        const uint8_t cluster_id[PKI_CLUSTER_ID_BYTES],
                        time_t not_before, time_t not_after)
{
    char cn[40], uri[PKI_URI_BYTES];
    snprintf(cn, sizeof cn, "paxfs-node-%u", node);
    pki_identity_uri(node, cluster_id, uri);
    X509 *cert = cert_base(node_key, cn, not_before, not_after);
    if (!cert)
        return NULL;
    bool ok = X509_set_issuer_name(cert, X509_get_subject_name(ca)) == 1 &&
              add_ext(cert, ca, NID_basic_constraints, "critical,CA:FALSE") &&
              add_ext(cert, ca, NID_key_usage, "critical,digitalSignature") &&
              add_ext(cert, ca, NID_ext_key_usage, "serverAuth,clientAuth") &&
              add_ext(cert, ca, NID_subject_key_identifier, "hash") &&
              add_ext(cert, ca, NID_authority_key_identifier, "keyid:always") &&
              add_san_uri(cert, uri) &&
              X509_sign(cert, ca_key, EVP_sha256()) > 0;
    if (!ok) {
        X509_free(cert);
        return NULL;
    }
    return cert;
}

X509 *pki_client_cert_new(X509 *ca, EVP_PKEY *ca_key, EVP_PKEY *client_key,
                          const uint8_t cluster_id[PKI_CLUSTER_ID_BYTES],
                          time_t not_before, time_t not_after)
{
    char uri[PKI_URI_BYTES];
    pki_client_uri(cluster_id, uri);
    X509 *cert = cert_base(client_key, "paxfs-client", not_before, not_after);
    if (!cert)
        return NULL;
    /* clientAuth only: a client certificate can never serve as a node's */
    bool ok = X509_set_issuer_name(cert, X509_get_subject_name(ca)) == 1 &&
              add_ext(cert, ca, NID_basic_constraints, "critical,CA:FALSE") &&
              add_ext(cert, ca, NID_key_usage, "critical,digitalSignature") &&
              add_ext(cert, ca, NID_ext_key_usage, "clientAuth") &&
              add_ext(cert, ca, NID_subject_key_identifier, "hash") &&
              add_ext(cert, ca, NID_authority_key_identifier, "keyid:always") &&
              add_san_uri(cert, uri) &&
              X509_sign(cert, ca_key, EVP_sha256()) > 0;
    if (!ok) {
        X509_free(cert);
        return NULL;
    }
    return cert;
}

/* Writes a memory BIO's bytes to a new file with mode, fsynced. */
static int write_bio(const char *path, BIO *bio, mode_t mode)
{
    char *data;
    long len = BIO_get_mem_data(bio, &data);
    if (len <= 0)
        return -EIO;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0)
        return -errno;
    int rc = 0;
    if (fchmod(fd, mode) != 0) /* the umask must not widen or narrow it */
        rc = -errno;
    size_t off = 0;
    while (rc == 0 && off < (size_t)len) {
        ssize_t w = write(fd, data + off, (size_t)len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            rc = w < 0 ? -errno : -EIO;
        else
            off += (size_t)w;
    }
    if (rc == 0 && fsync(fd) != 0)
        rc = -errno;
    if (close(fd) != 0 && rc == 0)
        rc = -errno;
    if (rc)
        unlink(path);
    return rc;
}

int pki_write_key(const char *path, EVP_PKEY *key, mode_t mode)
{
    BIO *bio = BIO_new(BIO_s_mem());
    if (!bio)
        return -ENOMEM;
    int rc = PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL) == 1
                 ? write_bio(path, bio, mode) : -EIO;
    BIO_free(bio);
    return rc;
}

int pki_write_cert(const char *path, X509 *cert, mode_t mode)
{
    BIO *bio = BIO_new(BIO_s_mem());
    if (!bio)
        return -ENOMEM;
    int rc = PEM_write_bio_X509(bio, cert) == 1 ? write_bio(path, bio, mode) : -EIO;
    BIO_free(bio);
    return rc;
}

X509 *pki_read_cert(const char *path)
{
    BIO *bio = BIO_new_file(path, "r");
    if (!bio)
        return NULL;
    X509 *cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    BIO_free(bio);
    return cert;
}

EVP_PKEY *pki_read_key(const char *path)
{
    BIO *bio = BIO_new_file(path, "r");
    if (!bio)
        return NULL;
    EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    return key;
}

const char *pki_ssl_error(char *out, size_t outlen)
{
    unsigned long e = ERR_get_error();
    if (e == 0)
        snprintf(out, outlen, "no OpenSSL error");
    else
        ERR_error_string_n(e, out, outlen);
    ERR_clear_error();
    return out;
}
