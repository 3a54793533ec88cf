# Included by datapath.pyx (one extension module, so the hot path stays inlined).
#
# The send queue of the Datapath: TX slots (_tx_slot, _tx_commit), sendmmsg of
# the whole queue (_tx_flush; capture mode for tests), and what waits after
# EAGAIN (_tx_compact, _tx_wait_writable; Datapath._on_writable sends it when the
# socket is writable again). The queue's fields (_tx_msgs, _tx_iov, _tx_addr,
# _tx_buf, _q_start, _q_len, _fail_sends, _fail_errno) are declared in the
# Datapath class.


cdef inline uint8_t* _tx_slot(Datapath self) noexcept:
    """The buffer of the next queue entry, or NULL when the queue stays full."""
    if self._q_len == TX_QUEUE:
        _tx_flush(self)
        if self._q_len == TX_QUEUE:
            _tx_compact(self)
            if self._q_len == TX_QUEUE:
                return NULL
    return self._tx_buf + self._q_len * TX_SLOT


cdef inline void _tx_commit(Datapath self, int length, const sockaddr_in6* sa, socklen_t salen) noexcept:
    cdef size_t i = self._q_len
    self._tx_iov[i].iov_len = length
    memcpy(&self._tx_addr[i], sa, salen)
    self._tx_msgs[i].msg_hdr.msg_namelen = salen
    self._q_len = i + 1


cdef void _tx_compact(Datapath self) noexcept:
    """Move the entries still waiting (after EAGAIN) to the front of the queue."""
    cdef size_t i, k = 0
    if self._q_start == 0:
        return
    for i in range(self._q_start, self._q_len):
        memmove(self._tx_buf + k * TX_SLOT, self._tx_buf + i * TX_SLOT, self._tx_iov[i].iov_len)
        self._tx_iov[k].iov_len = self._tx_iov[i].iov_len
        memcpy(&self._tx_addr[k], &self._tx_addr[i], sizeof(sockaddr_in6))
        self._tx_msgs[k].msg_hdr.msg_namelen = self._tx_msgs[i].msg_hdr.msg_namelen
        k += 1
    self._q_start = 0
    self._q_len = k


cdef void _tx_flush(Datapath self):
    """sendmmsg the queue; on EAGAIN keep the rest and wait for writability."""
    cdef int rc
    cdef size_t i
    if self.capture:
        for i in range(self._q_start, self._q_len):
            self.captured.append((
                PyBytes_FromStringAndSize(<char*>self._tx_buf + i * TX_SLOT, self._tx_iov[i].iov_len),
                _tuple_from_sockaddr(&self._tx_addr[i]),
            ))
            self._counters[C_TX_PACKETS] += 1
            self._counters[C_TX_BYTES] += self._tx_iov[i].iov_len
        self._q_start = self._q_len = 0
        return
    if self.fd < 0:
        self._q_start = self._q_len = 0
        return
    cdef int err
    while self._q_start < self._q_len:
        if self._fail_sends > 0:  # tests: a full send buffer, which loopback never has
            self._fail_sends -= 1
            rc, err = -1, self._fail_errno
        else:
            rc = sendmmsg(self.fd, self._tx_msgs + self._q_start, <unsigned int>(self._q_len - self._q_start), 0)
            err = errno if rc < 0 else 0
        self._counters[C_SEND_CALLS] += 1
        if rc > 0:
            for i in range(self._q_start, self._q_start + rc):
                self._counters[C_TX_BYTES] += self._tx_iov[i].iov_len
            self._counters[C_TX_PACKETS] += rc
            self._q_start += rc
            continue
        if rc < 0 and err == EINTR:
            continue
        if rc < 0 and err == EAGAIN:
            self._counters[D_SEND_BUFFER_FULL] += 1
            _tx_wait_writable(self)
            return
        # another error on the first message: drop it, go on with the rest
        self._counters[D_SEND_ERROR] += 1
        self._q_start += 1
    self._q_start = self._q_len = 0


cdef void _tx_wait_writable(Datapath self):
    if self._writing or self._loop is None:
        return
    try:
        self._loop.add_writer(self.fd, self._on_writable)
        self._writing = True
    except Exception:
        logger.exception("add_writer failed")
