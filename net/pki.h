/* pki — the cluster's certificates: how they name a node, and how
 * `paxfs init` (and the tests) make them with the OpenSSL 3 API.
 *
 * Naming scheme. A node certificate identifies node K of cluster C by one
 * subjectAltName of type URI:
 *
 *     paxfs:node:<K>:cluster:<C as 32 lowercase hex digits>
 *
 * with K in decimal without leading zeros. That URI is the identity the
 * transport checks, and the only one: a certificate must carry exactly one
 * "paxfs:" URI and it must parse exactly.
 *
 * The operator client (`paxfs status`) has an identity of its own,
 *
 *     paxfs:client:cluster:<C as 32 lowercase hex digits>
 *
 * so that it never has to borrow a node's key (a node replaces its inbound
 * connection from node K by any newer one that authenticates as K: a client
 * posing as K would cut K off). A client certificate (client.crt, CN
 * "paxfs-client") carries extendedKeyUsage clientAuth only: it can dial a
 * node but never pass for one. pki_cert_identity does not accept it and
 * pki_cert_client_identity accepts nothing else, so code that checks node
 * identities cannot mistake a client for node 0. The subject CN ("paxfs-node-<K>")
 * is for humans reading `openssl x509 -text`; it is never trusted. A SAN URI
 * rather than the CN, because the CN is free text with no fixed grammar, and
 * rather than an otherName, because an otherName needs a private OID that
 * common tools print as opaque bytes.
 *
 * The CA is a self-signed EC P-256 certificate (CN "paxfs cluster CA <C>",
 * basicConstraints CA:TRUE pathlen:0, keyUsage keyCertSign+cRLSign). Node
 * certificates carry EC P-256 keys, basicConstraints CA:FALSE, keyUsage
 * digitalSignature, extendedKeyUsage serverAuth+clientAuth (every node both
 * dials and accepts), are signed with ECDSA-SHA256, carry a random 127-bit
 * serial, and are valid from one hour before creation (clock skew between
 * hosts) for ten years. */
#ifndef PAXFS_NET_PKI_H
#define PAXFS_NET_PKI_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#define PKI_CLUSTER_ID_BYTES 16
#define PKI_VALID_DAYS 3650
#define PKI_URI_BYTES 80

/* Writes the identity URI of (node, cluster) into out. */
void pki_identity_uri(uint32_t node, const uint8_t cluster_id[PKI_CLUSTER_ID_BYTES],
                      char out[PKI_URI_BYTES]);
/* The identity a certificate names. 0 and *node/cluster_id filled; -EACCES
 * if it names none, several, or a malformed one. cert is borrowed. */
int pki_cert_identity(X509 *cert, uint32_t *node,
                      uint8_t cluster_id[PKI_CLUSTER_ID_BYTES]);

/* Writes the client identity URI of cluster_id into out. */
void pki_client_uri(const uint8_t cluster_id[PKI_CLUSTER_ID_BYTES], char out[PKI_URI_BYTES]);
/* The cluster whose operator client a certificate names. 0 and cluster_id
 * filled; -EACCES if it names none (a node identity included), several, or a
 * malformed one. cert is borrowed. */
int pki_cert_client_identity(X509 *cert, uint8_t cluster_id[PKI_CLUSTER_ID_BYTES]);

/* A new EC P-256 key, or NULL (OpenSSL error queue holds why). */
EVP_PKEY *pki_key_new(void);
/* A self-signed CA for the cluster, valid [not_before, not_after]. */
X509 *pki_ca_new(EVP_PKEY *ca_key, const uint8_t cluster_id[PKI_CLUSTER_ID_BYTES],
                 time_t not_before, time_t not_after);
/* Node `node`'s certificate for node_key, signed by (ca, ca_key). */
X509 *pki_node_cert_new(X509 *ca, EVP_PKEY *ca_key, EVP_PKEY *node_key, uint32_t node,
                        const uint8_t cluster_id[PKI_CLUSTER_ID_BYTES],
                        time_t not_before, time_t not_after);

/* The operator client's certificate for client_key, signed by (ca, ca_key). */
X509 *pki_client_cert_new(X509 *ca, EVP_PKEY *ca_key, EVP_PKEY *client_key,
                          const uint8_t cluster_id[PKI_CLUSTER_ID_BYTES],
                          time_t not_before, time_t not_after);

/* Write PEM to a new file (O_EXCL: never overwrites) with the given mode,
 * fsynced. 0 or -errno (-EIO for an encoding failure). */
int pki_write_key(const char *path, EVP_PKEY *key, mode_t mode);
int pki_write_cert(const char *path, X509 *cert, mode_t mode);
/* Read one PEM object; NULL if the file is missing or malformed. */
X509 *pki_read_cert(const char *path);
EVP_PKEY *pki_read_key(const char *path);

/* The oldest queued OpenSSL error as text (and the queue cleared), for logs. */
const char *pki_ssl_error(char *out, size_t outlen);

#endif
