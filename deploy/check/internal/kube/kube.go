// Package kube renders the kustomizations under deploy/kubernetes with the
// kustomize API, decodes every rendered object strictly into its
// Kubernetes (or Prometheus Operator) API type, and checks the rules the
// manifests promise: probes, resources, non-root, read-only root file
// system, graceful termination, an HPA, a PDB and a Service per Deployment,
// NetworkPolicies that select real pods, no committed Secrets.
package kube

import (
	"errors"
	"fmt"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/biobridge/bridge/deploy/check/internal/acl"
)

// Object is one rendered object and where it came from.
type Object struct {
	// ID is kind/name as kustomize reports it.
	ID  string
	Obj runtime.Object
}

// Render builds the kustomization in dir as `kubectl kustomize dir` would
// (default load restrictions: nothing outside the kustomization's tree),
// and returns each object as JSON.
func Render(dir string) (ids []string, docs [][]byte, err error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	for _, r := range rm.Resources() {
		j, err := r.MarshalJSON()
		if err != nil {
			return nil, nil, fmt.Errorf("kustomize build %s: %s: %w", dir, r.CurId(), err)
		}
		ids = append(ids, r.CurId().String())
		docs = append(docs, j)
	}
	return ids, docs, nil
}

// Decoder decodes objects strictly: unknown fields, duplicate fields and
// unregistered kinds are errors.
type Decoder struct {
	s *kjson.Serializer
}

// NewDecoder registers the API groups the manifests may use. Anything else
// (a typo in apiVersion or kind, a CRD nobody installs) fails to decode.
func NewDecoder() (*Decoder, error) {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, autoscalingv2.AddToScheme,
		policyv1.AddToScheme, networkingv1.AddToScheme, monitoringv1.AddToScheme,
	} {
		if err := add(scheme); err != nil {
			return nil, fmt.Errorf("register api types: %w", err)
		}
	}
	s := kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme, scheme,
		kjson.SerializerOptions{Yaml: false, Strict: true})
	return &Decoder{s: s}, nil
}

// Decode decodes one object.
func (d *Decoder) Decode(doc []byte) (runtime.Object, error) {
	obj, _, err := d.s.Decode(doc, nil, nil)
	if err != nil {
		return nil, err
	}
	return obj, nil
}

// Load renders dir and decodes every object; all decoding errors are
// reported together.
func Load(dir string) ([]Object, error) {
	ids, docs, err := Render(dir)
	if err != nil {
		return nil, err
	}
	dec, err := NewDecoder()
	if err != nil {
		return nil, err
	}
	var objs []Object
	var errs []error
	for i, doc := range docs {
		obj, err := dec.Decode(doc)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %s: %w", dir, ids[i], err))
			continue
		}
		objs = append(objs, Object{ID: ids[i], Obj: obj})
	}
	return objs, errors.Join(errs...)
}

// Policy says what Check enforces beyond the defaults.
type Policy struct {
	// PinnedImages requires every image to carry a tag other than latest,
	// or a digest (production overlays).
	PinnedImages bool
	// SecretExamples are the names of the Secrets that have a documented
	// example (deploy/kubernetes/secrets/<name>.env.example); every Secret a
	// pod references must be one of them.
	SecretExamples map[string]bool
	// Rule is the PrometheusRule spec the rendered one must equal (from
	// deploy/prometheus/alerts.yaml); nil skips the comparison.
	Rule *monitoringv1.PrometheusRuleSpec
}

// Check enforces the manifests' promises over one rendered kustomization.
func Check(objs []Object, p Policy) error {
	var (
		errs     []error
		deps     []*appsv1.Deployment
		svcs     []*corev1.Service
		hpas     []*autoscalingv2.HorizontalPodAutoscaler
		pdbs     []*policyv1.PodDisruptionBudget
		nps      []*networkingv1.NetworkPolicy
		sms      []*monitoringv1.ServiceMonitor
		prs      []*monitoringv1.PrometheusRule
		ingresss []*networkingv1.Ingress
	)
	for _, o := range objs {
		switch v := o.Obj.(type) {
		case *corev1.Secret:
			errs = append(errs, fmt.Errorf("%s: Secrets must not be committed; reference them and create them out of band", o.ID))
		case *appsv1.Deployment:
			deps = append(deps, v)
		case *corev1.Service:
			svcs = append(svcs, v)
		case *autoscalingv2.HorizontalPodAutoscaler:
			hpas = append(hpas, v)
		case *policyv1.PodDisruptionBudget:
			pdbs = append(pdbs, v)
		case *networkingv1.NetworkPolicy:
			nps = append(nps, v)
		case *monitoringv1.ServiceMonitor:
			sms = append(sms, v)
		case *monitoringv1.PrometheusRule:
			prs = append(prs, v)
		case *networkingv1.Ingress:
			ingresss = append(ingresss, v)
		}
	}
	if len(deps) == 0 {
		errs = append(errs, errors.New("no Deployments rendered"))
	}
	for _, d := range deps {
		errs = append(errs, checkDeployment(d, p)...)
		errs = append(errs, checkCompanions(d, svcs, hpas, pdbs, nps)...)
	}
	for _, s := range svcs {
		if len(podsSelectedBy(deps, s.Spec.Selector)) == 0 {
			errs = append(errs, fmt.Errorf("Service %s: selector %v matches no Deployment's pods", s.Name, s.Spec.Selector))
		}
	}
	for _, h := range hpas {
		if h.Spec.ScaleTargetRef.Kind != "Deployment" || findDeployment(deps, h.Spec.ScaleTargetRef.Name) == nil {
			errs = append(errs, fmt.Errorf("HorizontalPodAutoscaler %s: scaleTargetRef %s/%s is not a rendered Deployment", h.Name, h.Spec.ScaleTargetRef.Kind, h.Spec.ScaleTargetRef.Name))
		}
	}
	errs = append(errs, checkNetworkPolicies(nps, deps)...)
	errs = append(errs, checkServiceMonitors(sms, svcs)...)
	errs = append(errs, checkIngresses(ingresss, svcs)...)
	if p.Rule != nil {
		errs = append(errs, checkPrometheusRules(prs, *p.Rule)...)
	}
	return errors.Join(errs...)
}

func findDeployment(deps []*appsv1.Deployment, name string) *appsv1.Deployment {
	for _, d := range deps {
		if d.Name == name {
			return d
		}
	}
	return nil
}

func checkDeployment(d *appsv1.Deployment, p Policy) []error {
	var errs []error
	where := "Deployment " + d.Name
	fail := func(format string, a ...any) { errs = append(errs, fmt.Errorf(where+": "+format, a...)) }
	sel, err := selectorOf(d.Spec.Selector)
	if err != nil {
		fail("selector: %v", err)
	} else if !sel.matches(d.Spec.Template.Labels) {
		fail("selector %v does not match the pod template's labels %v", d.Spec.Selector.MatchLabels, d.Spec.Template.Labels)
	}
	pod := d.Spec.Template.Spec
	if g := pod.TerminationGracePeriodSeconds; g == nil || *g < 20 {
		fail("terminationGracePeriodSeconds must be at least 20 (preStop 5 s + 10 s gRPC drain + shutdown)")
	}
	if sc := pod.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		fail("pod securityContext.runAsNonRoot must be true")
	} else if sc.RunAsUser != nil && *sc.RunAsUser == 0 {
		fail("pod securityContext.runAsUser must not be 0")
	}
	if len(pod.Containers) == 0 {
		fail("no containers")
	}
	for _, c := range pod.Containers {
		cw := fmt.Sprintf("container %s: ", c.Name)
		ports := map[string]int32{}
		for _, cp := range c.Ports {
			ports[cp.Name] = cp.ContainerPort
		}
		if c.Image == "" {
			fail(cw + "no image")
		} else if p.PinnedImages && !pinned(c.Image) {
			fail(cw+"image %q must be pinned to a version tag or digest, not latest", c.Image)
		}
		if c.ReadinessProbe == nil || c.LivenessProbe == nil {
			fail(cw + "needs readiness and liveness probes")
		}
		for name, pr := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe, "startup": c.StartupProbe} {
			if pr != nil {
				if err := checkProbePort(pr, ports); err != nil {
					fail(cw+"%s probe: %v", name, err)
				}
			}
		}
		if c.Lifecycle == nil || c.Lifecycle.PreStop == nil {
			fail(cw + "needs a preStop hook so endpoints drop the pod before SIGTERM")
		}
		req, lim := c.Resources.Requests, c.Resources.Limits
		if req.Cpu().IsZero() || req.Memory().IsZero() || lim.Memory().IsZero() {
			fail(cw + "needs cpu and memory requests and a memory limit")
		}
		sc := c.SecurityContext
		switch {
		case sc == nil:
			fail(cw + "needs a securityContext")
		default:
			if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				fail(cw + "securityContext.readOnlyRootFilesystem must be true")
			}
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				fail(cw + "securityContext.allowPrivilegeEscalation must be false")
			}
			if sc.RunAsUser != nil && *sc.RunAsUser == 0 {
				fail(cw + "securityContext.runAsUser must not be 0")
			}
		}
		for _, ef := range c.EnvFrom {
			if ef.SecretRef != nil && p.SecretExamples != nil && !p.SecretExamples[ef.SecretRef.Name] {
				fail(cw+"Secret %q has no example in deploy/kubernetes/secrets/%s.env.example", ef.SecretRef.Name, ef.SecretRef.Name)
			}
		}
		for _, e := range c.Env {
			if e.Name == "SERVICE_ACL" {
				if err := acl.ReadersOnlyRead(e.Value); err != nil {
					fail(cw+"%v", err)
				}
			}
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && p.SecretExamples != nil && !p.SecretExamples[e.ValueFrom.SecretKeyRef.Name] {
				fail(cw+"Secret %q has no example in deploy/kubernetes/secrets/%s.env.example", e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Name)
			}
		}
	}
	return errs
}

func pinned(image string) bool {
	if strings.Contains(image, "@sha256:") {
		return true
	}
	slash := strings.LastIndex(image, "/")
	colon := strings.LastIndex(image, ":")
	return colon > slash && !strings.HasSuffix(image, ":latest")
}

func checkProbePort(p *corev1.Probe, ports map[string]int32) error {
	var port string
	switch {
	case p.GRPC != nil:
		for _, n := range ports {
			if n == p.GRPC.Port {
				return nil
			}
		}
		return fmt.Errorf("grpc port %d is not a container port", p.GRPC.Port)
	case p.HTTPGet != nil:
		port = p.HTTPGet.Port.String()
	case p.TCPSocket != nil:
		port = p.TCPSocket.Port.String()
	case p.Exec != nil:
		if len(p.Exec.Command) == 0 {
			return errors.New("exec without a command")
		}
		return nil
	default:
		return errors.New("no handler")
	}
	if _, ok := ports[port]; ok {
		return nil
	}
	for _, n := range ports {
		if fmt.Sprint(n) == port {
			return nil
		}
	}
	return fmt.Errorf("port %s is not a container port", port)
}

func checkCompanions(d *appsv1.Deployment, svcs []*corev1.Service, hpas []*autoscalingv2.HorizontalPodAutoscaler, pdbs []*policyv1.PodDisruptionBudget, nps []*networkingv1.NetworkPolicy) []error {
	var errs []error
	labels := d.Spec.Template.Labels
	where := "Deployment " + d.Name
	var svc *corev1.Service
	for _, s := range svcs {
		if len(s.Spec.Selector) > 0 && (selector{match: s.Spec.Selector}).matches(labels) {
			svc = s
		}
	}
	if svc == nil {
		errs = append(errs, fmt.Errorf("%s: no Service selects its pods", where))
	} else {
		names := map[string]bool{}
		for _, c := range d.Spec.Template.Spec.Containers {
			for _, p := range c.Ports {
				names[p.Name] = true
			}
		}
		for _, sp := range svc.Spec.Ports {
			if sp.TargetPort.String() != "" && sp.TargetPort.IntValue() == 0 && !names[sp.TargetPort.String()] {
				errs = append(errs, fmt.Errorf("Service %s: targetPort %q is not a port name of Deployment %s", svc.Name, sp.TargetPort.String(), d.Name))
			}
		}
	}
	hasHPA := false
	for _, h := range hpas {
		if h.Spec.ScaleTargetRef.Kind == "Deployment" && h.Spec.ScaleTargetRef.Name == d.Name {
			hasHPA = true
			if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 2 {
				errs = append(errs, fmt.Errorf("HorizontalPodAutoscaler %s: minReplicas must be at least 2 (one pod is no availability)", h.Name))
			}
		}
	}
	if !hasHPA {
		errs = append(errs, fmt.Errorf("%s: no HorizontalPodAutoscaler", where))
	}
	hasPDB := false
	for _, p := range pdbs {
		sel, err := selectorOf(p.Spec.Selector)
		if err == nil && !sel.empty() && sel.matches(labels) {
			hasPDB = true
		}
	}
	if !hasPDB {
		errs = append(errs, fmt.Errorf("%s: no PodDisruptionBudget selects its pods", where))
	}
	ingress := false
	for _, np := range nps {
		sel, err := selectorOf(&np.Spec.PodSelector)
		if err != nil || !sel.matches(labels) {
			continue
		}
		for _, t := range np.Spec.PolicyTypes {
			if t == networkingv1.PolicyTypeIngress {
				ingress = true
			}
		}
	}
	if !ingress {
		errs = append(errs, fmt.Errorf("%s: no NetworkPolicy restricts its ingress", where))
	}
	return errs
}

func podsSelectedBy(deps []*appsv1.Deployment, match map[string]string) []*appsv1.Deployment {
	var out []*appsv1.Deployment
	for _, d := range deps {
		if (selector{match: match}).matches(d.Spec.Template.Labels) {
			out = append(out, d)
		}
	}
	return out
}

// checkNetworkPolicies catches the silent failure of a NetworkPolicy: a
// label typo makes a selector match nothing, and the policy then allows or
// protects nothing without any error.
func checkNetworkPolicies(nps []*networkingv1.NetworkPolicy, deps []*appsv1.Deployment) []error {
	var errs []error
	matchesPods := func(ls *selector) bool {
		if ls.empty() {
			return true
		}
		for _, d := range deps {
			if ls.matches(d.Spec.Template.Labels) {
				return true
			}
		}
		return false
	}
	checkPeers := func(np *networkingv1.NetworkPolicy, dir string, i int, peers []networkingv1.NetworkPolicyPeer) {
		for j, peer := range peers {
			// A pod selector inside a namespace selector picks pods in other
			// namespaces; only same-namespace selectors can be verified.
			if peer.PodSelector == nil || peer.NamespaceSelector != nil {
				continue
			}
			sel, err := selectorOf(peer.PodSelector)
			if err != nil {
				errs = append(errs, fmt.Errorf("NetworkPolicy %s: %s[%d].peer[%d]: %v", np.Name, dir, i, j, err))
				continue
			}
			if !matchesPods(&sel) {
				errs = append(errs, fmt.Errorf("NetworkPolicy %s: %s[%d].peer[%d]: podSelector %v matches no Deployment's pods", np.Name, dir, i, j, peer.PodSelector.MatchLabels))
			}
		}
	}
	for _, np := range nps {
		sel, err := selectorOf(&np.Spec.PodSelector)
		if err != nil {
			errs = append(errs, fmt.Errorf("NetworkPolicy %s: podSelector: %v", np.Name, err))
			continue
		}
		if !matchesPods(&sel) {
			errs = append(errs, fmt.Errorf("NetworkPolicy %s: podSelector %v matches no Deployment's pods", np.Name, np.Spec.PodSelector.MatchLabels))
		}
		for i, r := range np.Spec.Ingress {
			checkPeers(np, "ingress", i, r.From)
		}
		for i, r := range np.Spec.Egress {
			checkPeers(np, "egress", i, r.To)
		}
	}
	return errs
}

func checkServiceMonitors(sms []*monitoringv1.ServiceMonitor, svcs []*corev1.Service) []error {
	var errs []error
	for _, sm := range sms {
		sel, err := selectorOf(&sm.Spec.Selector)
		if err != nil {
			errs = append(errs, fmt.Errorf("ServiceMonitor %s: selector: %v", sm.Name, err))
			continue
		}
		var matched []*corev1.Service
		for _, s := range svcs {
			if sel.matches(s.Labels) {
				matched = append(matched, s)
			}
		}
		if len(matched) == 0 {
			errs = append(errs, fmt.Errorf("ServiceMonitor %s: selector matches no Service", sm.Name))
		}
		for _, ep := range sm.Spec.Endpoints {
			for _, s := range matched {
				found := false
				for _, p := range s.Spec.Ports {
					if p.Name == ep.Port {
						found = true
					}
				}
				if !found {
					errs = append(errs, fmt.Errorf("ServiceMonitor %s: Service %s has no port named %q", sm.Name, s.Name, ep.Port))
				}
			}
		}
		if sm.Spec.JobLabel != "" {
			for _, s := range matched {
				if s.Labels[sm.Spec.JobLabel] == "" {
					errs = append(errs, fmt.Errorf("ServiceMonitor %s: Service %s lacks the job label %q", sm.Name, s.Name, sm.Spec.JobLabel))
				}
			}
		}
	}
	return errs
}

func checkIngresses(ings []*networkingv1.Ingress, svcs []*corev1.Service) []error {
	var errs []error
	for _, ing := range ings {
		for _, r := range ing.Spec.Rules {
			if r.HTTP == nil {
				continue
			}
			for _, p := range r.HTTP.Paths {
				if p.Backend.Service == nil {
					continue
				}
				var svc *corev1.Service
				for _, s := range svcs {
					if s.Name == p.Backend.Service.Name {
						svc = s
					}
				}
				if svc == nil {
					errs = append(errs, fmt.Errorf("Ingress %s: backend Service %q is not rendered", ing.Name, p.Backend.Service.Name))
					continue
				}
				if svc.Name != "gateway" {
					errs = append(errs, fmt.Errorf("Ingress %s: only the gateway may be reachable from outside, not %q", ing.Name, svc.Name))
				}
				found := false
				for _, sp := range svc.Spec.Ports {
					if sp.Name == p.Backend.Service.Port.Name || (sp.Port == p.Backend.Service.Port.Number && sp.Port != 0) {
						found = true
					}
				}
				if !found {
					errs = append(errs, fmt.Errorf("Ingress %s: Service %s has no port %v", ing.Name, svc.Name, p.Backend.Service.Port))
				}
			}
		}
	}
	return errs
}

// DeploymentImages maps every Deployment's containers to their images:
// "<deployment>" for a Deployment's only container, "<deployment>/<container>"
// when it has several.
func DeploymentImages(objs []Object) map[string]string {
	out := map[string]string{}
	for _, o := range objs {
		d, ok := o.Obj.(*appsv1.Deployment)
		if !ok {
			continue
		}
		cs := d.Spec.Template.Spec.Containers
		for _, c := range cs {
			key := d.Name
			if len(cs) > 1 {
				key += "/" + c.Name
			}
			out[key] = c.Image
		}
	}
	return out
}
