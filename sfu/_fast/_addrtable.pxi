# Included by datapath.pyx (one extension module, so the hot path stays inlined).
#
# The address table: AddrKey (family, port, scope, address of a source), its
# FNV-1a hash, the conversions between sockaddr and the socket module's address
# tuples, and the Datapath's hash table from source address to Peer (open
# addressing, linear probing, backward-shift deletion: _table_lookup,
# _table_put, _table_grow, _table_remove). The table's fields (_keys, _vals,
# _cap, _count, _registered) are declared in the Datapath class.


cdef struct AddrKey:
    uint32_t family
    uint32_t port     # host order
    uint32_t scope
    uint8_t addr[16]


cdef inline bint _key_from_sockaddr(const void* sa, AddrKey* k) noexcept nogil:
    memset(k, 0, sizeof(AddrKey))
    cdef const sockaddr_in* sin
    cdef const sockaddr_in6* sin6
    if (<const sockaddr*>sa).sa_family == AF_INET:
        sin = <const sockaddr_in*>sa
        k.family = AF_INET
        k.port = ntohs(sin.sin_port)
        memcpy(k.addr, &sin.sin_addr, 4)
        return True
    if (<const sockaddr*>sa).sa_family == AF_INET6:
        sin6 = <const sockaddr_in6*>sa
        k.family = AF_INET6
        k.port = ntohs(sin6.sin6_port)
        k.scope = sin6.sin6_scope_id
        memcpy(k.addr, &sin6.sin6_addr, 16)
        return True
    return False


cdef inline uint64_t _key_hash(const AddrKey* k) noexcept nogil:
    # FNV-1a over the key bytes
    cdef const uint8_t* p = <const uint8_t*>k
    cdef uint64_t h = 1469598103934665603ULL
    cdef size_t i
    for i in range(sizeof(AddrKey)):
        h = (h ^ p[i]) * 1099511628211ULL
    return h


cdef socklen_t _sockaddr_from_tuple(object addr, sockaddr_in6* out) except 0:
    """Fill ``out`` (large enough for either family) from a socket-module address tuple."""
    memset(out, 0, sizeof(sockaddr_in6))
    host = addr[0]
    port = int(addr[1])
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"bad port {port}")
    cdef bytes h = host.encode("ascii") if isinstance(host, str) else bytes(host)
    cdef sockaddr_in* sin = <sockaddr_in*>out
    if b":" not in h:
        if inet_pton(AF_INET, h, &sin.sin_addr) != 1:
            raise ValueError(f"bad IPv4 address {host!r}")
        sin.sin_family = AF_INET
        sin.sin_port = htons(<uint16_t>port)
        return sizeof(sockaddr_in)
    if b"%" in h:
        h = h.split(b"%")[0]
    if inet_pton(AF_INET6, h, &out.sin6_addr) != 1:
        raise ValueError(f"bad IPv6 address {host!r}")
    out.sin6_family = AF_INET6
    out.sin6_port = htons(<uint16_t>port)
    if len(addr) >= 4:
        out.sin6_scope_id = <uint32_t>int(addr[3])
    return sizeof(sockaddr_in6)


cdef object _tuple_from_sockaddr(const void* sa):
    cdef char text[INET6_ADDRSTRLEN + 1]
    cdef const sockaddr_in* sin
    cdef const sockaddr_in6* sin6
    if (<const sockaddr*>sa).sa_family == AF_INET:
        sin = <const sockaddr_in*>sa
        inet_ntop(AF_INET, &sin.sin_addr, text, sizeof(text))
        return (text.decode("ascii"), ntohs(sin.sin_port))
    if (<const sockaddr*>sa).sa_family == AF_INET6:
        sin6 = <const sockaddr_in6*>sa
        inet_ntop(AF_INET6, &sin6.sin6_addr, text, sizeof(text))
        return (text.decode("ascii"), ntohs(sin6.sin6_port), sin6.sin6_flowinfo, sin6.sin6_scope_id)
    return None


cdef Peer _table_lookup(Datapath self, const AddrKey* key):
    cdef size_t mask = self._cap - 1
    cdef size_t i = _key_hash(key) & mask
    while self._vals[i] != NULL:
        if memcmp(&self._keys[i], key, sizeof(AddrKey)) == 0:
            return <Peer>self._vals[i]
        i = (i + 1) & mask
    return None


cdef int _table_put(Datapath self, const AddrKey* key, Peer peer) except -1:
    cdef size_t mask, i
    if (self._count + 1) * 2 > self._cap:
        _table_grow(self)
    mask = self._cap - 1
    i = _key_hash(key) & mask
    while self._vals[i] != NULL:
        if memcmp(&self._keys[i], key, sizeof(AddrKey)) == 0:
            # another peer had this address: it loses it (the newest binding wins)
            old = <Peer>self._vals[i]
            old.registered = False
            self._registered.discard(old)
            self._vals[i] = <PyObject*>peer
            self._registered.add(peer)
            return 0
        i = (i + 1) & mask
    memcpy(&self._keys[i], key, sizeof(AddrKey))
    self._vals[i] = <PyObject*>peer
    self._count += 1
    self._registered.add(peer)
    return 0


cdef int _table_grow(Datapath self) except -1:
    cdef size_t old_cap = self._cap
    cdef AddrKey* old_keys = self._keys
    cdef PyObject** old_vals = self._vals
    cdef size_t new_cap = old_cap * 2
    cdef AddrKey* keys = <AddrKey*>calloc(new_cap, sizeof(AddrKey))
    cdef PyObject** vals = <PyObject**>calloc(new_cap, sizeof(PyObject*))
    cdef size_t i, j, mask = new_cap - 1
    if keys == NULL or vals == NULL:
        free(keys)
        free(vals)
        raise MemoryError()
    for i in range(old_cap):
        if old_vals[i] != NULL:
            j = _key_hash(&old_keys[i]) & mask
            while vals[j] != NULL:
                j = (j + 1) & mask
            memcpy(&keys[j], &old_keys[i], sizeof(AddrKey))
            vals[j] = old_vals[i]
    self._keys = keys
    self._vals = vals
    self._cap = new_cap
    free(old_keys)
    free(old_vals)
    return 0


cdef void _table_remove(Datapath self, const AddrKey* key, Peer peer):
    cdef size_t mask = self._cap - 1
    cdef size_t i = _key_hash(key) & mask
    cdef size_t j, k
    while self._vals[i] != NULL:
        if memcmp(&self._keys[i], key, sizeof(AddrKey)) == 0:
            break
        i = (i + 1) & mask
    else:
        return
    if self._vals[i] != <PyObject*>peer:
        return  # the address went to another peer meanwhile
    self._registered.discard(peer)
    self._count -= 1
    # backward-shift deletion keeps every probe chain unbroken
    j = i
    while True:
        j = (j + 1) & mask
        if self._vals[j] == NULL:
            break
        k = _key_hash(&self._keys[j]) & mask
        if (j > i and (k <= i or k > j)) or (j < i and (k <= i and k > j)):
            memcpy(&self._keys[i], &self._keys[j], sizeof(AddrKey))
            self._vals[i] = self._vals[j]
            i = j
    self._vals[i] = NULL
