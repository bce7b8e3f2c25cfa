package stack

import "maps"

// DevSecrets returns the development value of every secret a service
// requires, for tools that start the services as separate processes (the
// chaos harness) with the same configuration a devstack uses.
func DevSecrets() map[string]string { return maps.Clone(devSecrets) }

// ServiceACL is the SERVICE_ACL a devstack gives service ("persistence",
// "tokenbroker", "ingest", "publisher") when every service presents the
// token of the caller named internal; "" for a service without one.
func ServiceACL(service, internal string) string {
	if acl, ok := devACL[service]; ok {
		return acl(internal)
	}
	return ""
}
