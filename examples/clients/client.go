// Calls the quick-start gateway with Go's standard library only.
//
//	go run client.go [BASE_URL [CA_FILE]]
//
// or FNGATE_URL / FNGATE_CA_FILE (default https://localhost:8443 and
// certs/dev-ca.pem). Only that CA is trusted. Each step prints a line; any
// answer other than the expected one exits 1.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

func fail(step, format string, args ...interface{}) {
	fmt.Printf("FAIL %s: %s\n", step, fmt.Sprintf(format, args...))
	os.Exit(1)
}

func setting(index int, variable, fallback string) string {
	if len(os.Args) > index {
		return os.Args[index]
	}
	if value := os.Getenv(variable); value != "" {
		return value
	}
	return fallback
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

type gateway struct {
	base   string
	client *http.Client
}

func (g gateway) do(step, method, target string, body interface{}) answer {
	var reader io.Reader
	if body != nil {
		data, _ := json.Marshal(body)
		reader = bytes.NewReader(data)
	}
	request, err := http.NewRequest(method, target, reader)
	if err != nil {
		fail(step, "%v", err)
	}
	if body != nil {
		request.Header.Set("Content-Type", "application/json")
	}
	response, err := g.client.Do(request)
	if err != nil {
		fail(step, "%v", err)
	}
	defer response.Body.Close()
	data, err := io.ReadAll(response.Body)
	if err != nil {
		fail(step, "reading the answer: %v", err)
	}
	return answer{response.StatusCode, response.Header, data}
}

func main() {
	base := strings.TrimRight(setting(1, "FNGATE_URL", "https://localhost:8443"), "/")
	caFile := setting(2, "FNGATE_CA_FILE", "certs/dev-ca.pem")
	pem, err := os.ReadFile(caFile)
	if err != nil {
		fail("setup", "%v", err)
	}
	roots := x509.NewCertPool() // this CA only: no system roots
	if !roots.AppendCertsFromPEM(pem) {
		fail("setup", "%s holds no PEM certificate", caFile)
	}
	g := gateway{base, &http.Client{
		Timeout:   60 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true},
	}}

	// 1. A sync call.
	a := g.do("sync", "POST", base+"/demo/square", map[string]int{"x": 7})
	if a.status != 200 || strings.TrimSpace(string(a.body)) != "49" {
		fail("sync", "%d %s", a.status, a.body)
	}
	fmt.Println(`sync: POST /demo/square {"x": 7} -> 200 49`)

	// 2. A spawn, then polling its Location until it is no longer 202.
	a = g.do("spawn", "POST", base+"/demo/square/spawn", map[string]int{"x": 7})
	location := a.header.Get("Location")
	if a.status != 202 || location == "" {
		fail("spawn", "%d %s", a.status, a.body)
	}
	baseURL, _ := url.Parse(base + "/")
	ref, err := url.Parse(location)
	if err != nil {
		fail("spawn", "Location %q: %v", location, err)
	}
	polls := 0
	for {
		polls++
		a = g.do("spawn", "GET", baseURL.ResolveReference(ref).String(), nil)
		if a.status != 202 {
			break
		}
		seconds, err := strconv.Atoi(a.header.Get("Retry-After"))
		if err != nil {
			seconds = 1
		}
		time.Sleep(time.Duration(seconds) * time.Second)
	}
	if a.status != 200 || strings.TrimSpace(string(a.body)) != "49" {
		fail("spawn", "%d %s", a.status, a.body)
	}
	fmt.Printf("spawn: 202 Location %s, %d poll(s) -> 200 49\n", location, polls)

	// 3. A long poll: the answer comes the moment the call ends.
	a = g.do("long-poll", "POST", base+"/demo/slow/spawn", map[string]int{"seconds": 1})
	var spawned struct {
		CallID string `json:"call_id"`
	}
	if a.status != 202 || json.Unmarshal(a.body, &spawned) != nil || !strings.HasPrefix(spawned.CallID, "fc-") {
		fail("long-poll", "spawn answered %d %s", a.status, a.body)
	}
	a = g.do("long-poll", "GET", base+"/calls/"+spawned.CallID+"?wait=30", nil)
	var result struct {
		Slept *float64 `json:"slept"`
	}
	if a.status != 200 || json.Unmarshal(a.body, &result) != nil || result.Slept == nil || *result.Slept != 1 {
		fail("long-poll", "%d %s", a.status, a.body)
	}
	fmt.Printf("long-poll: GET /calls/%s?wait=30 -> 200 {\"slept\": 1}\n", spawned.CallID)

	// 4. An error's machine-readable code.
	a = g.do("error", "POST", base+"/demo/nope", map[string]int{})
	var problem struct {
		Code string `json:"code"`
	}
	contentType := a.header.Get("Content-Type")
	if a.status != 404 || !strings.HasPrefix(contentType, "application/problem+json") ||
		json.Unmarshal(a.body, &problem) != nil || problem.Code != "function_not_found" {
		fail("error", "%d %s %s", a.status, contentType, a.body)
	}
	fmt.Println("error: POST /demo/nope -> 404 function_not_found")
}
