package testenv

import (
	"encoding/binary"
	"net"
	"sync"
	"testing"
)

// StallProxy is a TCP proxy between Kafka clients and the broker that can
// stall the connections of one client (told apart by the client id of its
// first request). A stalled connection forwards nothing either way: the
// client's requests and the broker's responses are held. When the client
// gives up and closes the connection, what was held is dropped, as a reset
// connection drops what the peer never read; when the stall ends, what was
// held is delivered, late.
//
// The broker must advertise the proxy's address (kafkadev.Config.Advertise)
// so clients keep using it after their first metadata request.
//
// It is hand-written rather than toxiproxy because the fault must hit one
// client only: the broker advertises a single address, so every client's
// connections go through the same proxy, and toxiproxy's toxics apply to
// all connections of a proxy alike; telling publishers apart takes reading
// the client id out of the Kafka request header. It also needs to drop, not
// deliver, what it held for a connection the client closed.
type StallProxy struct {
	ln net.Listener

	mu       sync.Mutex
	cond     *sync.Cond
	upstream string
	stalled  map[string]bool // client ids
	closed   bool
	conns    map[net.Conn]struct{}
}

// NewStallProxy listens on a free loopback port; SetUpstream points it at
// the broker. It closes with t.
func NewStallProxy(t testing.TB) *StallProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &StallProxy{ln: ln, stalled: map[string]bool{}, conns: map[net.Conn]struct{}{}}
	p.cond = sync.NewCond(&p.mu)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

// Addr is the address clients connect to.
func (p *StallProxy) Addr() string { return p.ln.Addr().String() }

// SetUpstream sets the broker's address for new connections.
func (p *StallProxy) SetUpstream(addr string) {
	p.mu.Lock()
	p.upstream = addr
	p.mu.Unlock()
}

// Stall holds the traffic of clientID's connections until Resume.
func (p *StallProxy) Stall(clientID string) {
	p.mu.Lock()
	p.stalled[clientID] = true
	p.mu.Unlock()
}

// Resume delivers what was held for clientID and stops holding.
func (p *StallProxy) Resume(clientID string) {
	p.mu.Lock()
	delete(p.stalled, clientID)
	p.mu.Unlock()
	p.cond.Broadcast()
}

func (p *StallProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.cond.Broadcast()
}

func (p *StallProxy) serve() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		upstream := p.upstream
		p.mu.Unlock()
		broker, err := net.Dial("tcp", upstream)
		if err != nil {
			_ = client.Close()
			continue
		}
		c := &proxyConn{p: p, client: client, broker: broker, done: make(chan struct{})}
		p.mu.Lock()
		p.conns[client], p.conns[broker] = struct{}{}, struct{}{}
		p.mu.Unlock()
		go c.pipe(client, broker, true)
		go c.pipe(broker, client, false)
	}
}

// proxyConn is one proxied connection.
type proxyConn struct {
	p              *StallProxy
	client, broker net.Conn
	once           sync.Once
	done           chan struct{}

	mu       sync.Mutex
	clientID string
	header   []byte // the first request's bytes until the client id is known
}

// pipe copies src to dst, holding chunks while the connection's client is
// stalled. Reading goes on meanwhile, so a client that closes its end is
// noticed (and what was held for it dropped) at once.
func (c *proxyConn) pipe(src, dst net.Conn, fromClient bool) {
	chunks := make(chan []byte, 1024)
	go func() {
		for chunk := range chunks {
			if !c.wait() {
				return
			}
			if _, err := dst.Write(chunk); err != nil {
				c.shut()
				return
			}
		}
	}()
	defer close(chunks)
	defer c.shut()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if fromClient {
				c.learnClientID(buf[:n])
			}
			select {
			case chunks <- append([]byte(nil), buf[:n]...):
			case <-c.done:
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// wait blocks while the client is stalled; false means the connection or
// the proxy closed meanwhile and the held chunk is dropped.
func (c *proxyConn) wait() bool {
	p := c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		select {
		case <-c.done:
			return false
		default:
		}
		if p.closed {
			return false
		}
		c.mu.Lock()
		id := c.clientID
		c.mu.Unlock()
		if !p.stalled[id] {
			return true
		}
		p.cond.Wait()
	}
}

// learnClientID reads the client id from the first request's header:
// length int32, api key int16, api version int16, correlation id int32,
// client id as an int16 length and bytes.
func (c *proxyConn) learnClientID(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.clientID != "" || len(c.header) > 1024 {
		return
	}
	c.header = append(c.header, b...)
	const fixed = 4 + 2 + 2 + 4
	if len(c.header) < fixed+2 {
		return
	}
	n := int(int16(binary.BigEndian.Uint16(c.header[fixed:])))
	if n < 0 || len(c.header) < fixed+2+n {
		return
	}
	c.clientID = string(c.header[fixed+2 : fixed+2+n])
	c.header = nil
}

func (c *proxyConn) shut() {
	c.once.Do(func() {
		close(c.done)
		_ = c.client.Close()
		_ = c.broker.Close()
		p := c.p
		p.mu.Lock()
		delete(p.conns, c.client)
		delete(p.conns, c.broker)
		p.mu.Unlock()
		p.cond.Broadcast()
	})
}
