package config

import "testing"

func TestAgentCertPlan(t *testing.T) {
	present := func(string) bool { return true }
	absent := func(string) bool { return false }
	base := Agent{CertDir: "/etc/certs", CARootCert: "/ca/root.pem", CAProvider: ProviderIstio}
	with := func(f func(*Agent)) Agent { a := base; f(&a); return a }
	tests := []struct {
		name         string
		agent        Agent
		filesPresent func(string) bool
		want         CertPlan
	}{
		{"auto with the files uses them", with(func(a *Agent) { a.MountedCerts = MountedAuto }), present,
			CertPlan{Source: SourceFiles, MountedCertDir: "/etc/certs", CARootFile: "/ca/root.pem"}},
		{"auto without the files uses the CA", with(func(a *Agent) { a.MountedCerts = MountedAuto }), absent,
			CertPlan{Source: SourceCA, Signer: ProviderIstio, CARootFile: "/ca/root.pem"}},
		{"true waits for missing files", with(func(a *Agent) { a.MountedCerts = MountedOn }), absent,
			CertPlan{Source: SourceFiles, MountedCertDir: "/etc/certs", CARootFile: "/ca/root.pem"}},
		{"false ignores present files", with(func(a *Agent) { a.MountedCerts = MountedOff }), present,
			CertPlan{Source: SourceCA, Signer: ProviderIstio, CARootFile: "/ca/root.pem"}},
		{"cfssl is the signer", with(func(a *Agent) { a.MountedCerts = MountedOff; a.CAProvider = ProviderCFSSL }), absent,
			CertPlan{Source: SourceCA, Signer: ProviderCFSSL, CARootFile: "/ca/root.pem"}},
		{"plaintext istio follows no CA root", with(func(a *Agent) { a.MountedCerts = MountedOff; a.CAPlaintext = true }), absent,
			CertPlan{Source: SourceCA, Signer: ProviderIstio}},
		{"plaintext cfssl keeps its roots", with(func(a *Agent) {
			a.MountedCerts = MountedOff
			a.CAPlaintext = true
			a.CAProvider = ProviderCFSSL
		}), absent, CertPlan{Source: SourceCA, Signer: ProviderCFSSL, CARootFile: "/ca/root.pem"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.agent.CertPlan(tt.filesPresent); got != tt.want {
				t.Fatalf("CertPlan = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestAgentCheckPeers(t *testing.T) {
	for _, tt := range []struct {
		uids, gids []uint32
		want       bool
	}{{nil, nil, false}, {[]uint32{0}, nil, true}, {nil, []uint32{1000}, true}, {[]uint32{1}, []uint32{2}, true}} {
		if got := (Agent{AllowedUIDs: tt.uids, AllowedGIDs: tt.gids}).CheckPeers(); got != tt.want {
			t.Errorf("CheckPeers with uids %v gids %v = %v, want %v", tt.uids, tt.gids, got, tt.want)
		}
	}
}
