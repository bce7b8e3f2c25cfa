package main

import (
	"net"
	"sync"
	"time"
)

// proxy is a TCP proxy in front of a store, the broker, the emulator or the
// replicas of a service (connections are spread round-robin over the
// upstreams, skipping one that refuses, as a Kubernetes Service does).
// Cutting it closes every open connection and refuses new ones, which is
// what the services see when that dependency goes away; restoring it lets
// them reconnect. A latency delays every chunk forwarded in either
// direction (a slow network or a slow server as the client sees it).
type proxy struct {
	ln        net.Listener
	upstreams []string
	next      int
	mu        sync.Mutex
	cut       bool
	latency   time.Duration
	conns     map[net.Conn]struct{}
}

func newProxy(listen string, upstreams ...string) (*proxy, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	p := &proxy{ln: ln, upstreams: upstreams, conns: map[net.Conn]struct{}{}}
	go p.serve()
	return p, nil
}

func (p *proxy) Addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.handle(c)
	}
}

func (p *proxy) handle(c net.Conn) {
	p.mu.Lock()
	cut := p.cut
	p.mu.Unlock()
	if cut {
		_ = c.Close()
		return
	}
	p.mu.Lock()
	first := p.next
	p.next = (p.next + 1) % len(p.upstreams)
	p.mu.Unlock()
	var up net.Conn
	var err error
	for i := range p.upstreams {
		if up, err = net.Dial("tcp", p.upstreams[(first+i)%len(p.upstreams)]); err == nil {
			break
		}
	}
	if err != nil {
		_ = c.Close()
		return
	}
	p.mu.Lock()
	if p.cut {
		p.mu.Unlock()
		_ = c.Close()
		_ = up.Close()
		return
	}
	p.conns[c], p.conns[up] = struct{}{}, struct{}{}
	p.mu.Unlock()
	go p.pipe(c, up)
	go p.pipe(up, c)
}

func (p *proxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			d := p.latency
			p.mu.Unlock()
			if d > 0 {
				time.Sleep(d)
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	_ = dst.Close()
	_ = src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

// SetCut cuts the proxy or restores it.
func (p *proxy) SetCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			_ = c.Close()
		}
		p.conns = map[net.Conn]struct{}{}
	}
}

// SetLatency delays every chunk forwarded from now on by d (0: none).
func (p *proxy) SetLatency(d time.Duration) {
	p.mu.Lock()
	p.latency = d
	p.mu.Unlock()
}

func (p *proxy) Close() error {
	p.SetCut(true)
	return p.ln.Close()
}
