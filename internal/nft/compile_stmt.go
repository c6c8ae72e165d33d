package nft

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// counter: "counter" (an anonymous counter of the rule), "counter name
// NAME" (a named counter of the table), or "counter name FIELDS map @m"
// (the named counter map m gives the fields' key: a counter per key).
func (c *compiler) counter() error {
	c.next()
	if c.peek(0) != "name" {
		c.emit(&expr.Counter{})
		return nil
	}
	c.next()
	switch c.peek(0) {
	case "ip", "ip6", "meta", "th", "iifname", "oifname", "arp":
	default:
		name := c.next()
		if name == "" {
			return fmt.Errorf("counter name without a name")
		}
		c.emit(&expr.Objref{Type: unix.NFT_OBJECT_COUNTER, Name: strings.Trim(name, `"`)})
		return nil
	}
	m, err := c.mapLookup()
	if err != nil {
		return err
	}
	c.out.exprs = append(c.out.exprs, &objrefMap{sreg: 1, set: m})
	return nil
}

// log: "log [prefix "P"] group N", to nfnetlink_log group N (a prefix
// without blanks).
func (c *compiler) log() error {
	c.next()
	l := &expr.Log{}
	if c.peek(0) == "prefix" {
		c.next()
		p := c.next()
		if len(p) < 2 || p[0] != '"' || p[len(p)-1] != '"' {
			return fmt.Errorf("log prefix %q: a quoted word", p)
		}
		l.Data = []byte(p[1 : len(p)-1])
		l.Key |= 1 << unix.NFTA_LOG_PREFIX
	}
	if err := c.expect("group"); err != nil {
		return err
	}
	g, err := strconv.ParseUint(c.next(), 10, 16)
	if err != nil {
		return fmt.Errorf("log group %q", c.toks[c.i-1])
	}
	l.Group = uint16(g)
	l.Key |= 1 << unix.NFTA_LOG_GROUP
	c.emit(l)
	return nil
}

var limitUnits = map[string]expr.LimitTime{"second": expr.LimitTimeSecond, "minute": expr.LimitTimeMinute,
	"hour": expr.LimitTimeHour, "day": expr.LimitTimeDay}

// limit: "limit rate N/UNIT [burst B packets]" (nft's burst is 5 unless
// told).
func (c *compiler) limit() error {
	if err := c.expect("limit", "rate"); err != nil {
		return err
	}
	n, unit, _ := strings.Cut(c.next(), "/")
	rate, err := strconv.ParseUint(n, 10, 64)
	u, ok := limitUnits[unit]
	if err != nil || !ok {
		return fmt.Errorf("limit rate %q", c.toks[c.i-1])
	}
	l := &expr.Limit{Type: expr.LimitTypePkts, Rate: rate, Unit: u, Burst: 5}
	if c.peek(0) == "burst" {
		c.next()
		b, err := strconv.ParseUint(c.next(), 10, 32)
		if err != nil {
			return fmt.Errorf("limit burst %q", c.toks[c.i-1])
		}
		if err := c.expect("packets"); err != nil {
			return err
		}
		l.Burst = uint32(b)
	}
	c.emit(l)
	return nil
}
