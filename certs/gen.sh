#!/usr/bin/env bash
# Makes a throwaway development CA, a server certificate for localhost/127.0.0.1 signed by it,
# and a client certificate (CN=app) for mutual-TLS tests. NOT for production: the keys are
# committed to the repository so that tests and the demo work out of the box.
#   usage: certs/gen.sh [OUT_DIR]   (default: the certs/ folder itself)
set -euo pipefail
out="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
mkdir -p "$out"
cd "$out"
days=3650

# CA
openssl req -x509 -new -nodes -newkey rsa:2048 -sha256 -days "$days" \
    -keyout ca.key -out ca.crt -subj "/CN=pgshift dev CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

sign() { # name subject extfile-lines...
    local name=$1 subj=$2; shift 2
    openssl req -new -nodes -newkey rsa:2048 -sha256 -keyout "$name.key" -out "$name.csr" -subj "$subj" 2>/dev/null
    printf '%s\n' "$@" > "$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$name.crt" \
        -days "$days" -sha256 -extfile "$name.ext" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
}

sign server "/CN=localhost" \
    "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1"
sign client "/CN=app" \
    "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth"
rm -f ca.srl
# PostgreSQL and libpq refuse private keys readable by others.
chmod 0600 ca.key server.key client.key
echo "certs/gen.sh: wrote ca.crt ca.key server.crt server.key client.crt client.key in $out"
